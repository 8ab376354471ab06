#!/usr/bin/env python3
"""Redis's own cost per request of the check library, by batch size and Lua variant.

usage: bench/redis_micro.py LUADIR BATCH CALLS [POLICY] [DEPTH]

Starts its own redis-server, loads the .lua files of LUADIR (a copy of
crates/spillway-redis/lua, edited to try a variant) as a Functions library, and sends CALLS
FCALLs of BATCH requests each (DEPTH calls pipelined, default 1), then prints Redis CPU
(INFO cpu) per request. POLICY: `one` (one token bucket over 100,000 random users, the
default), `four` (token bucket, fixed window, GCRA, fixed window per request, as
examples/spillway.yaml's free tier, on new users each time) or `fourwarm` (the same over
1,000 users). The numbers only need to keep every request allowed.

With MODULE=PATH Redis loads the native module (crates/spillway-redis-module, e.g.
target/release/libspillway_redis_module.so) and the calls go to SPILLWAY.CHECK instead of the
library's function (the same keys, arguments and reply); LUADIR is still loaded, unused.

With CALLGRIND=1 Redis runs under valgrind's callgrind, instrumented only while the CALLS are
served, and the figure is instructions executed per request: deterministic, so two variants
compare on a machine far too noisy for CPU time (each run takes ~15 s). Profiles stay in
/tmp/rc/cg for callgrind_annotate.
"""
import os, random, socket, struct, subprocess, sys, time

# The same users in the same order on every run, so two Lua variants see the same keys.
random.seed(1)

luadir, batch, calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
policy = sys.argv[4] if len(sys.argv) > 4 else "one"
depth = int(sys.argv[5]) if len(sys.argv) > 5 else 1
files = ["common", "token_bucket", "gcra", "fixed_window", "sliding_window", "sliding_log", "leaky_bucket", "check"]
body = "".join(open(f"{luadir}/{f}.lua").read() for f in files)
refund = open(f"{luadir}/refund.lua").read()
src = f"#!lua name=bench\n{body}\n{refund}\nredis.register_function('chk', check)\nredis.register_function('ref', refund)\n"

s0 = socket.socket(); s0.bind(("127.0.0.1", 0)); port = s0.getsockname()[1]; s0.close()
CG = os.environ.get("CALLGRIND")
MODULE = os.environ.get("MODULE")
pre = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file=/tmp/rc/cg/out.%p"] if CG else []
os.makedirs("/tmp/rc/cg", exist_ok=True)
r = subprocess.Popen(pre + ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
                     + (["--loadmodule", MODULE] if MODULE else []), stdout=subprocess.DEVNULL)
try:
    for _ in range(600):
        try:
            c = socket.create_connection(("127.0.0.1", port)); break
        except OSError: time.sleep(0.05)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    f = c.makefile("rb")
    def enc(*args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            if isinstance(a, str): a = a.encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        return b"".join(out)
    def read():
        line = f.readline()
        t = line[:1]
        if t in b"+:": return line[1:-2]
        if t == b"-": raise RuntimeError(line)
        if t == b"$":
            n = int(line[1:-2])
            if n < 0: return None
            d = f.read(n + 2); return d[:-2]
        if t == b"*":
            return [read() for _ in range(int(line[1:-2]))]
        raise RuntimeError(line)
    def cmd(*a):
        c.sendall(enc(*a)); return read()
    cmd("FUNCTION", "LOAD", "REPLACE", src)
    def d(*xs): return struct.pack("<%dd" % len(xs), *xs)
    def req(u):
        if policy == "one":
            return [f"rl:{{u{u}}}:per-user:00000000deadbeef:u{u}"], d(1, 1, 1, 1, 1000, 1000000, 1, 1)
        ip = f"10.{u//65536%256}.{u//256%256}.{u%256}"
        t = f"t{u%500}"
        keys = [f"rl:{{{ip}}}:ip-burst:0000000000000001:{ip}", f"rl:{{{ip}}}:ip-daily-candidate:0000000000000002:{ip}",
                f"rl:{{{t}}}:free-user-minute:0000000000000003:{t}:u{u}", f"rl:{{{t}}}:free-user-daily:0000000000000004:{t}:u{u}"]
        return keys, d(1, 4, 1, 20, 50000, 100, 1, 1,
                       3, 200000, 86400000000, 0, 1, 0,
                       2, 1, 1000000, 1000000, 1, 1,
                       3, 1000000000, 86400000000, 0, 1, 1)
    n = 0
    def make():
        global n
        keys, packed = [], b""
        for _ in range(batch):
            if policy == "one": u = random.randint(1, 100000)
            elif policy == "fourwarm": u = random.randint(1, 1000)
            else: n += 1; u = n % 200000
            k, p = req(u); keys += k; packed += p
        if MODULE:
            return enc("SPILLWAY.CHECK", *keys, "", packed)
        return enc("FCALL", "chk", str(len(keys)), *keys, "", packed)
    def cpu():
        info = cmd("INFO", "cpu").decode()
        return sum(float(l.split(":")[1]) for l in info.split("\r\n") if l.startswith(("used_cpu_sys:", "used_cpu_user:")))
    warm = [make() for _ in range(max(calls // 5, 1))]
    msgs = [make() for _ in range(calls)]
    for m in warm:
        c.sendall(m); read()
    before = cpu()
    if CG:
        subprocess.run(["callgrind_control", "-i", "on", str(r.pid)], stdout=subprocess.DEVNULL, check=True)
    i = 0
    while i < len(msgs):
        chunk = msgs[i:i + depth]
        c.sendall(b"".join(chunk))
        for _ in chunk:
            rep = read()
        i += depth
    after = cpu()
    if CG:
        subprocess.run(["callgrind_control", "-d", str(r.pid)], stdout=subprocess.DEVNULL, check=True)
        import glob
        tot, in_call, dump = 0, 0, None
        for fn in glob.glob(f"/tmp/rc/cg/out.{r.pid}*"):
            for line in open(fn):
                if line.startswith("totals:") or line.startswith("summary:"):
                    if int(line.split()[1]) > tot:
                        tot, dump = int(line.split()[1]), fn
        # The call's own instructions (fcallCommand inclusive, or the module's command
        # dispatcher) do not depend on how long the run took, unlike the total, which holds
        # Redis's timers and expiry cycle.
        annotated = subprocess.run(["callgrind_annotate", "--inclusive=yes", dump],
                                   capture_output=True, text=True).stdout
        for line in annotated.splitlines():
            if ":fcallCommand " in line or ":RedisModuleCommandDispatcher " in line:
                in_call = int(line.split()[0].replace(",", ""))
        n = calls * batch
        print(f"{'module' if MODULE else luadir} {policy} batch {batch} depth {depth}: {tot / n:.0f} Ir/request, "
              f"{in_call / n:.0f} in the call")
        sys.exit(0)
    pass
    print(f"{'module' if MODULE else luadir} {policy} batch {batch} depth {depth}: {(after - before) * 1e6 / (calls * batch):.2f} us/request")
finally:
    r.terminate(); r.wait()
