#!/usr/bin/env python3
"""What one Lua operation costs Redis, in instructions, inside a Functions library.

usage: bench/lua_costs.py [ITERATIONS]

Starts its own redis-server (7.0 or later: Functions) under valgrind's callgrind, counting
only inside FCALL (--toggle-collect=fcallCommand, so neither the client's connection nor
Redis's timers are counted), loads one function per operation below, each repeating its
operation ITERATIONS times (default 20,000) in a loop, calls each once and prints the
instructions per repetition less the empty loop's. The count does not depend on time or
load, so it holds on a busy machine; it is the cost model behind the choices in
lua/check.lua (a C function call such as string.sub or struct.unpack costs hundreds of
instructions, a redis.call thousands, a table access about a hundred). Needs redis-server,
redis-cli and valgrind.
"""
import glob, os, socket, subprocess, sys, tempfile, time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
# Each operation runs with these locals: pack/unpack (struct), sub/byte/char/find (string),
# concat (table), raw (60 bytes), blob (100 bytes), idx (8 bytes), out (7 one-byte strings),
# t (a table), i (the loop counter).
OPS = {
    "empty": "",
    "table get": "local x = t[1]",
    "table set": "t[1] = i",
    "string ==": "local x = (raw == blob)",
    "string.byte": "local x = byte(raw, 17)",
    "string.char": "local x = char(33)",
    "string.sub, 8 bytes": "local x = sub(raw, 9, 16)",
    "string.sub, 33 bytes": "local x = sub(raw, 18, 50)",
    "string.find, plain": "local x = find(raw, idx, 9, true)",
    "a .. b .. c": "local x = sub(raw, 1, 5) .. idx .. sub(raw, 9)",
    "table.concat of 7": "local x = concat(out, '', 1, 7)",
    "new table": "local x = {}",
    "struct.unpack '<d'": "local x = unpack('<d', raw, 9)",
    "struct.unpack 6 doubles": "local a, b, c, d, e, f, p = unpack('<dddddd', blob, 1)",
    "struct.pack '<d'": "local x = pack('<d', i)",
    "struct.pack 6 doubles": "local x = pack('<dddddd', i, i, i, i, i, i)",
    "GET, no key": "local x = redis.pcall('GET', 'nokey')",
    "GET, 60-byte value": "local x = redis.pcall('GET', 'haskey')",
    "SET ... XX KEEPTTL": "local x = redis.pcall('SET', 'haskey', raw, 'XX', 'KEEPTTL')",
    "SET ... PX": "local x = redis.call('SET', 'haskey', raw, 'PX', '100000')",
}

ARGS = "pack, unpack, sub, byte, char, find, concat, raw, blob, idx, out, t, i"
lines = [
    "#!lua name=costs",
    "local function run(op) return function() "
    "local pack, unpack = struct.pack, struct.unpack "
    "local sub, byte, char, find = string.sub, string.byte, string.char, string.find "
    "local concat = table.concat "
    "local raw, blob, idx = string.rep('a', 60), string.rep('b', 100), 'aaaaaaaa' "
    "local out, t = {'a', 'b', 'c', 'd', 'e', 'f', 'g'}, {1} "
    f"for i = 1, {N} do op({ARGS}) end return 1 end end",
]
names = {}
for n, (name, code) in enumerate(OPS.items()):
    names[name] = f"op{n}"
    lines.append(f"redis.register_function('op{n}', run(function({ARGS}) {code} end))")
library = "\n".join(lines)

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
out_dir = tempfile.mkdtemp(prefix="lua-costs-")
server = subprocess.Popen(
    ["valgrind", "--tool=callgrind", "--toggle-collect=fcallCommand",
     f"--callgrind-out-file={out_dir}/out.%p",
     "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
     "--appendonly", "no"],
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def cli(*args):
    return subprocess.run(["redis-cli", "-p", str(port), *args],
                          capture_output=True, text=True).stdout.strip()


def control(*flags):
    subprocess.run(["callgrind_control", *flags, str(server.pid)],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)


try:
    for _ in range(600):
        if cli("PING") == "PONG":
            break
        time.sleep(0.1)
    loaded = cli("FUNCTION", "LOAD", "REPLACE", library)
    assert loaded == "costs", loaded
    cli("SET", "haskey", "x" * 60)
    per_op = {}
    for name, fn in names.items():
        control("-z")  # zero the counters
        answer = cli("FCALL", fn, "0")
        assert answer == "1", f"{name}: {answer}"
        control("-d")  # dump
        dump = max(glob.glob(f"{out_dir}/out.{server.pid}.*"),
                   key=lambda f: int(f.rsplit(".", 1)[1]))
        total = 0
        for line in open(dump):
            if line.startswith(("totals:", "summary:")):
                total = int(line.split()[1])
        per_op[name] = total / N
    empty = per_op.pop("empty")
    print(f"redis {cli('INFO', 'server').split('redis_version:')[1].split()[0]}, "
          f"{N} repetitions each, instructions per operation (the empty loop's "
          f"{empty:.0f} taken off):")
    for name, cost in per_op.items():
        print(f"{name:26s} {cost - empty:7.0f}")
finally:
    server.terminate()
    server.wait()
    for f in glob.glob(f"{out_dir}/*"):
        os.remove(f)
    os.rmdir(out_dir)
