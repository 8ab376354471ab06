//! Pieces of test policies that several suites write alike.

/// A policy's `store:` section for regions: a `redis` store whose `regions` are `regions`
/// (name and Redis URL, in order), with `extra` lines (`exchange: {...}`, `timeout: 200ms`)
/// under `store:` after them. Ends with a newline, ready to be followed by `limits:`.
pub fn regions_store(regions: &[(&str, &str)], extra: &[&str]) -> String {
    let mut text = String::from("store:\n  type: redis\n  regions:\n");
    for (name, url) in regions {
        text.push_str(&format!("    {name}: {{url: \"{url}\"}}\n"));
    }
    for line in extra {
        text.push_str(&format!("  {line}\n"));
    }
    text
}

/// URLs nothing listens on (ports 1, 2, 3, ...), for regions whose stores a test never calls.
pub fn unreachable(n: usize) -> String {
    format!("redis://127.0.0.1:{n}")
}

/// [`regions_store`] for `names`, each on an [`unreachable()`] URL in turn.
pub fn unreachable_regions(names: &[&str], extra: &[&str]) -> String {
    let urls: Vec<String> = (1..=names.len()).map(unreachable).collect();
    let regions: Vec<(&str, &str)> = names
        .iter()
        .copied()
        .zip(urls.iter().map(String::as_str))
        .collect();
    regions_store(&regions, extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_reads_as_written_by_hand() {
        assert_eq!(
            regions_store(&[("us", "redis://a:1"), ("eu", "redis://b:2")], &["timeout: 200ms"]),
            "store:\n  type: redis\n  regions:\n    us: {url: \"redis://a:1\"}\n    eu: {url: \"redis://b:2\"}\n  timeout: 200ms\n"
        );
        assert_eq!(
            unreachable_regions(&["us", "eu"], &[]),
            "store:\n  type: redis\n  regions:\n    us: {url: \"redis://127.0.0.1:1\"}\n    eu: {url: \"redis://127.0.0.1:2\"}\n"
        );
    }
}
