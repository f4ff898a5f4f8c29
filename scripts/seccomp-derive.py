#!/usr/bin/python3
"""Lists the system calls the worker's seccomp allow-list lacks, from a run of the test suite.

How the allow-list in embed/harden/seccomp.cpp is derived:

  1. Build with the derivation switch, in a build directory of its own (its workers ALLOW and LOG every call the
     table does not allow, instead of refusing it; never use that build for anything else):
       cmake -S . -B build-seccomp-log -DSPR_SECCOMP_LOG=ON -DPython3_EXECUTABLE=/usr/bin/python3
       cmake --build build-seccomp-log -j2
  2. As root, run this script; it registers itself as the kernel's audit listener (so no record is lost to the
     printk rate limit, as `dmesg` loses them), runs the command (default: the whole ctest suite of that build),
     and collects the seccomp records (audit type 1326, action SECCOMP_RET_LOG) of every process:
       sudo scripts/seccomp-derive.py --build build-seccomp-log
       sudo scripts/seccomp-derive.py -- ctest --test-dir build-seccomp-log -R 'realcode|security' -j2
  3. Review each listed call: who made it (the executable and count are printed), why (strace -f the test that
     made it; for ioctl, fcntl, prctl, socket and clone the record carries no arguments, so strace shows which
     command or family was new), and whether a run may have it. Add it to kTable with the reason in its group's
     comment, or leave it refused. Repeat until the list is empty.

Tests that assert a refusal of an argument-checked call (a netlink socket, an ioctl command) make records too:
those are the refusals working, not gaps. Requires root (CAP_AUDIT_CONTROL) and a kernel with audit support.
"""

import argparse
import collections
import ctypes
import ctypes.util
import os
import re
import socket
import struct
import subprocess
import sys
import threading

NETLINK_AUDIT = 9
AUDIT_SET = 1001
AUDIT_STATUS_PID = 4
AUDIT_SECCOMP = 1326
SECCOMP_RET_LOG = 0x7FFC0000
NLM_F_REQUEST = 1
NLM_F_ACK = 4

RECORD = re.compile(r'pid=(\d+) comm="?([^" ]*)"? exe="?([^" ]*)"? .*?arch=([0-9a-f]+) syscall=(\d+) .*?code=(0x[0-9a-f]+)')


def set_listener(sock: socket.socket, pid: int) -> None:
    """Makes `pid` the audit daemon (0: none, records go back to the kernel log)."""
    status = struct.pack("=11I", AUDIT_STATUS_PID, 0, 0, pid, 0, 0, 0, 0, 0, 0, 0)
    header = struct.pack("=IHHII", 16 + len(status), AUDIT_SET, NLM_F_REQUEST | NLM_F_ACK, 1, 0)
    sock.sendto(header + status, (0, 0))


def syscall_name(nr: int) -> str:
    lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2")
    lib.seccomp_syscall_resolve_num_arch.restype = ctypes.c_void_p
    lib.seccomp_syscall_resolve_num_arch.argtypes = [ctypes.c_uint32, ctypes.c_int]
    ptr = lib.seccomp_syscall_resolve_num_arch(0, nr)  # 0: the native architecture
    if not ptr:
        return f"#{nr}"
    name = ctypes.string_at(ptr).decode()
    ctypes.CDLL(None).free(ctypes.c_void_p(ptr))
    return name


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build-seccomp-log", help="derivation build directory (default: %(default)s)")
    ap.add_argument("command", nargs="*", help="command to run instead of the build's whole ctest suite")
    args = ap.parse_args()
    command = args.command or ["ctest", "--test-dir", args.build, "-j2", "--timeout", "900"]
    if os.geteuid() != 0:
        print("seccomp-derive: needs root (it becomes the kernel's audit listener)", file=sys.stderr)
        return 2

    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT)
    sock.bind((0, 0))
    # A burst of records must wait in the socket, not be dropped (SO_RCVBUFFORCE: root may exceed rmem_max).
    sock.setsockopt(socket.SOL_SOCKET, 33, 256 << 20)  # SO_RCVBUFFORCE
    set_listener(sock, os.getpid())
    calls: dict = collections.defaultdict(collections.Counter)  # syscall number -> Counter of executables
    done = threading.Event()
    lost = [0]

    def listen() -> None:
        sock.settimeout(1.0)
        while True:
            try:
                data = sock.recv(1 << 20)
            except socket.timeout:
                if done.is_set():
                    return  # the command ended and the kernel's queue is drained
                continue
            except OSError as e:  # ENOBUFS: records were dropped; say so, keep listening
                lost[0] += 1
                print(f"seccomp-derive: records lost ({e})", file=sys.stderr)
                continue
            # One record per datagram; its nlmsg_len leaves out the header (an audit quirk), so the text is the rest.
            if len(data) < 16 or struct.unpack_from("=IH", data)[1] != AUDIT_SECCOMP:
                continue
            m = RECORD.search(data[16:].decode(errors="replace"))
            if m and int(m.group(6), 16) == SECCOMP_RET_LOG:
                calls[int(m.group(5))][os.path.basename(m.group(3))] += 1

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    try:
        rc = subprocess.call(command)
    finally:
        done.set()
        thread.join()
        set_listener(sock, 0)
        sock.close()

    print(f"\n{len(calls)} system call(s) outside the allow-list (command exit status {rc}"
          f"{', RECORDS WERE LOST: run again' if lost[0] else ''}):")
    for nr, who in sorted(calls.items(), key=lambda kv: syscall_name(kv[0])):
        where = ", ".join(f"{exe} x{n}" for exe, n in who.most_common())
        print(f"  {syscall_name(nr):24} {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
