"""Starts `safe-py-runner http` on a free loopback port and talks to it (helpers of the HTTP tests)."""
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time

CLI = os.environ.get("SPR_CLI", "safe-py-runner")
TIME_SCALE = float(os.environ.get("SPR_TEST_TIME_SCALE", "1"))


class Server:
    """One server process; its JSON log lines (access log and events) are collected in `log`."""

    def __init__(self, *args, start_timeout=60):
        self.proc = subprocess.Popen([CLI, "http", "--listen", "127.0.0.1:0", *args], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.log = []
        self.stopping = False
        self.listening = threading.Event()
        self.port = None
        threading.Thread(target=self._read_log, daemon=True).start()
        if not self.listening.wait(start_timeout * TIME_SCALE):
            self.proc.kill()
            raise RuntimeError("the server did not start: %s" % self.log)
        self.host = "127.0.0.1"

    def _read_log(self):
        for line in self.proc.stderr:
            try:
                entry = json.loads(line)
            except ValueError:
                entry = {"text": line.rstrip("\n")}
            self.log.append(entry)
            if entry.get("event") == "listening":
                self.port = entry["port"]
                self.listening.set()
        self.listening.set()
        if not self.stopping:
            # The server ended without stop() (by itself, or killed by a test): say how, with what it wrote that is not a log entry (a sanitizer's
            # report, an abort message), past pytest's capture so that ctest shows it.
            status = self.proc.wait()
            text = "\n".join(e["text"] for e in self.log if "text" in e)
            sys.__stderr__.write("safe-py-runner http (pid %d) ended (status %s) without the test's stop(); its other output:\n%s\n"
                                 % (self.proc.pid, status, text or "(none)"))

    @property
    def pid(self):
        return self.proc.pid

    def connect(self, timeout=60):
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout * TIME_SCALE)

    def request(self, method, path, body=None, headers=None, timeout=60):
        """(status, headers dict with lower-case names, body bytes); `body` may be bytes, str or a JSON value."""
        conn = self.connect(timeout)
        try:
            if body is not None and not isinstance(body, (bytes, str)):
                body = json.dumps(body)
            h = {"Content-Type": "application/json"} if body is not None else {}
            h.update(headers or {})
            conn.request(method, path, body=body, headers=h)
            res = conn.getresponse()
            return res.status, {k.lower(): v for k, v in res.getheaders()}, res.read()
        finally:
            conn.close()

    def json(self, method, path, body=None, headers=None, timeout=60):
        status, h, data = self.request(method, path, body, headers, timeout)
        return status, h, json.loads(data) if data else None

    def stop(self, sig=signal.SIGTERM, timeout=60):
        self.stopping = True
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout * TIME_SCALE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def rss_kb(self, field="VmRSS"):
        """The server's resident memory, or its peak with field="VmHWM"."""
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        return 0


def wait_for(predicate, timeout, step=0.05):
    end = time.monotonic() + timeout * TIME_SCALE
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def process_alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
