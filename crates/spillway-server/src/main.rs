//! The `spillway` binary. Parsing and dispatch only; each subcommand lives in the library so
//! it can be read (and tested) on its own.
// The allocator below is the only `unsafe` here, allowed where it is.
#![deny(unsafe_code)]

use clap::Parser;
use spillway_server::cli::{Cli, Command};
use std::process::ExitCode;

// Every decision allocates a few short-lived buffers (keys, headers, the body) on whichever
// worker thread runs it; mimalloc's thread-local free lists serve those far faster than the
// system allocator, which spent about a tenth of the server's time under load.
#[global_allocator]
static ALLOCATOR: Mimalloc = Mimalloc;

/// mimalloc, asked through its plain entry points whenever the alignment allows.
///
/// Every mimalloc block is at least word-aligned (block sizes are whole words and a page's
/// first block is 16-byte aligned), so a layout that asks for no more than a word's alignment
/// (almost every Rust allocation) and whose size is a multiple of it (every Rust type's is) is
/// served by `mi_malloc` as it is; the second condition also keeps mimalloc's guarded debug
/// mode, which may place a block right before a guard page whatever its size, aligned. Its
/// aligned entry point
/// gives the same memory, but when the size class's free list is empty and the size is not a
/// power of two it over-allocates by the alignment, into the next size class, which leaves the
/// right class empty for the next call too. Under callgrind about a quarter of a `/v1/check`'s
/// 35 allocations took that path, at about 180 instructions each; through `mi_malloc` the
/// allocations average under 40 (docs/BENCHMARKS.md, issue 16, session 14). Wider alignments
/// still go through the aligned entry points.
struct Mimalloc;

/// The alignment every mimalloc block has.
const WORD: usize = std::mem::size_of::<usize>();

/// Whether `mi_malloc` serves `layout` aligned: at most a word's alignment, and a size that is a
/// multiple of it.
#[inline]
fn plain(layout: std::alloc::Layout) -> bool {
    layout.align() <= WORD && layout.size().is_multiple_of(layout.align())
}

// SAFETY: each method passes the layout on to mimalloc, whose blocks satisfy it: a plain
// block is aligned to a word (see `Mimalloc`), and the aligned calls honour any power of two.
// Every block, however allocated, is freed and resized by mimalloc.
#[allow(unsafe_code)]
unsafe impl std::alloc::GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys::{mi_malloc, mi_malloc_aligned};
        if plain(layout) {
            mi_malloc(layout.size()).cast()
        } else {
            mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys::{mi_zalloc, mi_zalloc_aligned};
        if plain(layout) {
            mi_zalloc(layout.size()).cast()
        } else {
            mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
        libmimalloc_sys::mi_free(ptr.cast());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        use libmimalloc_sys::{mi_realloc, mi_realloc_aligned};
        if plain(layout) && new_size.is_multiple_of(layout.align()) {
            mi_realloc(ptr.cast(), new_size).cast()
        } else {
            mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => spillway_server::serve::main(*args),
        Command::Validate(args) => spillway_server::validate::main(&args),
        Command::Check(args) => spillway_server::client::main(&args),
        Command::Catalog(args) => spillway_server::catalog::cli::main(args),
        Command::Decisions(args) => spillway_server::telemetry::decision_log::query::main(&args),
    }
}

#[cfg(test)]
mod tests {
    use super::{Mimalloc, ALLOCATOR};
    use std::alloc::{GlobalAlloc, Layout};

    /// Every size up to 1 KiB (each small size class) and a few larger ones, at every
    /// alignment a type can ask for and past it: each block, allocated plain or zeroed and
    /// then grown, honours its alignment and keeps its bytes. Blocks are held until the end,
    /// so the size classes run out of free blocks and refill, the path where the plain and
    /// aligned entry points differ.
    #[test]
    #[allow(unsafe_code)]
    fn blocks_honour_every_alignment() {
        let a: &Mimalloc = &ALLOCATOR;
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            let mut held = Vec::new();
            for round in 0..3 {
                for size in (1..=1024).chain([1500, 4000, 4096, 70_000]) {
                    let layout = Layout::from_size_align(size, align).expect("layout");
                    // SAFETY: the layout's size is not zero; the block is written only within
                    // its size and freed below with the layout it was last given.
                    unsafe {
                        let p = if round == 1 {
                            a.alloc_zeroed(layout)
                        } else {
                            a.alloc(layout)
                        };
                        assert!(!p.is_null());
                        assert_eq!(p as usize % align, 0, "{size} bytes at {align}");
                        if round == 1 {
                            assert!((0..size).all(|i| *p.add(i) == 0), "zeroed {size}");
                        }
                        p.write_bytes(7, size);
                        let q = a.realloc(p, layout, size * 2 + 8);
                        assert!(!q.is_null());
                        assert_eq!(q as usize % align, 0, "{size} bytes grown at {align}");
                        assert!((0..size).all(|i| *q.add(i) == 7), "grown {size}");
                        let grown = Layout::from_size_align(size * 2 + 8, align).expect("layout");
                        held.push((q, grown));
                    }
                }
            }
            for (p, layout) in held {
                // SAFETY: allocated above with this layout, freed once.
                unsafe { a.dealloc(p, layout) };
            }
        }
    }
}
