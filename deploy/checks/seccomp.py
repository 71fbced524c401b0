"""The gateway's seccomp profile, checked and loaded as runc would load it.

    python3 deploy/checks/seccomp.py PROFILE.json

Checks the profile's content (deny by default, io_uring and the calls the
gateway needs allowed), then compiles it with the machine's libseccomp in
a child process that runs `true` under it. SECCOMP_DROP (comma-separated
calls left out) and SECCOMP_EXEC (a JSON argv run instead of `true`) let
scripts/check-k8s.sh run the gateway itself under it, or under the profile
without io_uring. Standard library only.
"""

import ctypes, ctypes.util, json, os, sys

path = sys.argv[1]
def fail(msg):
    print(f"FAIL  {path}: {msg}", file=sys.stderr)
    sys.exit(1)

prof = json.load(open(path))
# SECCOMP_DROP: calls to leave out (to show that the profile matters);
# SECCOMP_EXEC: what to run under it (JSON list; default `true`).
drop = set(filter(None, os.environ.get("SECCOMP_DROP", "").split(",")))
run = json.loads(os.environ.get("SECCOMP_EXEC", '["true"]'))
if os.environ.get("SECCOMP_EXEC"):
    quiet = True
else:
    quiet = False
if prof.get("defaultAction") != "SCMP_ACT_ERRNO":
    fail("defaultAction must be SCMP_ACT_ERRNO")
allowed = {n for r in prof["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" and not r.get("args")
           for n in r["names"]}
for needed in ("io_uring_setup", "io_uring_enter", "io_uring_register", "sched_getaffinity",
               "membarrier", "mmap", "futex", "ioctl", "epoll_wait", "connect"):
    if needed not in allowed:
        fail(f"{needed} is not allowed")
if not quiet:
    print(f"ok    seccomp profile: {len(allowed)} calls allowed, io_uring among them")

# Compile and load it the way runc does, in a child process that then runs
# `true`: every name resolves and libseccomp takes every rule.
name = ctypes.util.find_library("seccomp")
if not name:
    print("note  no libseccomp on this machine: the profile was not compiled")
    sys.exit(0)
pid = os.fork()
if pid == 0:
    try:
        lib = ctypes.CDLL(name)
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        class Cmp(ctypes.Structure):
            _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                        ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]
        lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                               ctypes.c_uint, ctypes.POINTER(Cmp)]
        lib.seccomp_load.argtypes = [ctypes.c_void_p]
        ops = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4,
               "SCMP_CMP_GE": 5, "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}
        arches = {"SCMP_ARCH_X86_64": b"x86_64", "SCMP_ARCH_AARCH64": b"aarch64"}
        def action(rule):
            if rule["action"] == "SCMP_ACT_ALLOW":
                return 0x7FFF0000
            if rule["action"] == "SCMP_ACT_ERRNO":
                return 0x00050000 | rule.get("errnoRet", prof.get("defaultErrnoRet", 1))
            raise ValueError(f"action {rule['action']}")
        ctx = lib.seccomp_init(action(dict(action=prof["defaultAction"])))
        for arch in prof["architectures"]:
            rc = lib.seccomp_arch_add(ctx, lib.seccomp_arch_resolve_name(arches[arch]))
            if rc not in (0, -17):  # -EEXIST: the native one
                raise ValueError(f"architecture {arch}: {os.strerror(-rc)}")
        unknown = []
        for rule in prof["syscalls"]:
            cmps = [Cmp(a["index"], ops[a["op"]], a["value"], a.get("valueTwo", 0))
                    for a in rule.get("args", [])]
            array = (Cmp * len(cmps))(*cmps) if cmps else None
            for call in rule["names"]:
                if call in drop:
                    continue
                nr = lib.seccomp_syscall_resolve_name(call.encode())
                if nr == -1:
                    unknown.append(call)
                    continue
                rc = lib.seccomp_rule_add_array(ctx, action(rule), nr, len(cmps), array)
                if rc:
                    raise ValueError(f"{call}: {os.strerror(-rc)}")
        if unknown:
            raise ValueError(f"unknown to libseccomp: {unknown}")
        rc = lib.seccomp_load(ctx)
        if rc:
            raise ValueError(f"seccomp_load: {os.strerror(-rc)}")
        os.execvp(run[0], run)
    except Exception as error:  # noqa: BLE001 - reported, child exits
        print(f"FAIL  {path}: {error}", file=sys.stderr)
        os._exit(1)
_, status = os.waitpid(pid, 0)
code = os.waitstatus_to_exitcode(status)
if quiet:
    sys.exit(code)
if code != 0:
    sys.exit(1)
print(f"ok    seccomp profile compiles with {name} and a process runs under it")
