#!/usr/bin/env python3
"""Load and faults on POST /v1/run with wrk: 64 connections, every answer checked in wrk's Lua, the server's
RSS sampled. Phase "plain": correct runs only; phase "mixed": 10% timeouts and 5% worker crashes mixed in.
Usage: load_test.py [--seconds N] [--connections N] [--json OUT]. Exits 1 on a wrong answer, a 5xx, a
connection error, or RSS growth past the bound."""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from spr_http import TIME_SCALE, Server, wait_for  # noqa: E402

# Each run prints its kind and number first, so an answer says which request it answers.
NORMAL = "n = input_data['n']\nprint('normal', n)\nresult = n * 2"
TIMEOUT = "n = input_data['n']\nprint('timeout', n, flush=True)\nwhile True: pass"
CRASH = "import signal\nn = input_data['n']\nprint('crash', n, flush=True)\nsignal.raise_signal(9)"

LUA = r"""
local bodies = { normal = [==[%(normal)s]==], timeout = [==[%(timeout)s]==], crash = [==[%(crash)s]==] }
local mix_timeouts, mix_crashes = %(timeouts)f, %(crashes)f
local threads = {}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(os.time() * 100 + id)
  wrong, server_errors, other_status, normal, timeouts, crashes = 0, 0, 0, 0, 0, 0
  first_wrong = ""
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  local r = math.random()
  local kind = "normal"
  if r < mix_timeouts then kind = "timeout" elseif r < mix_timeouts + mix_crashes then kind = "crash" end
  local body = bodies[kind]:gsub("__N__", tostring(math.random(1, 1000000)))
  return wrk.format(nil, nil, nil, body)
end

local function bad(body)
  wrong = wrong + 1
  if first_wrong == "" then first_wrong = (body:sub(1, 300):gsub('[%%c"\\]', " ")) end
end

function response(status, headers, body)
  if status >= 500 then server_errors = server_errors + 1; return bad(body) end
  if status ~= 200 then other_status = other_status + 1; return bad(body) end
  local kind, n = body:match('"stdout":"(%%a+) (%%d+)\\n"')
  local error_kind = body:match('"error_kind":"([%%a_]+)"')
  if kind == "normal" then
    local result = body:match('"result":(%%d+)')
    if error_kind == "none" and body:find('"ok":true', 1, true) and tonumber(result) == 2 * tonumber(n) then
      normal = normal + 1
    else
      bad(body)
    end
  elseif (kind == "timeout" or kind == nil) and error_kind == "timeout" and body:find("after 0.2s", 1, true) then
    -- a loaded machine can end the 0.2 s run before its first print; a normal run's limit is 5 s
    timeouts = timeouts + 1
  elseif (kind == "crash" or kind == nil) and error_kind == "worker_crashed" then
    crashes = crashes + 1
  else
    bad(body)
  end
end

function done(summary, latency, requests)
  local t = { wrong = 0, server_errors = 0, other_status = 0, normal = 0, timeouts = 0, crashes = 0, first_wrong = "" }
  for _, thread in ipairs(threads) do
    for k, _ in pairs(t) do
      if k == "first_wrong" then
        if t.first_wrong == "" then t.first_wrong = thread:get(k) end
      else
        t[k] = t[k] + thread:get(k)
      end
    end
  end
  local e = summary.errors
  io.write(string.format('SPR_RESULT {"requests": %%d, "seconds": %%.3f, "p50_ms": %%.3f, "p90_ms": %%.3f, ' ..
    '"p99_ms": %%.3f, "max_ms": %%.3f, "wrong": %%d, "server_errors": %%d, "other_status": %%d, "normal": %%d, ' ..
    '"timeouts": %%d, "crashes": %%d, "connect_errors": %%d, "read_errors": %%d, "write_errors": %%d, ' ..
    '"socket_timeouts": %%d, "first_wrong": "%%s"}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000, t.wrong, t.server_errors, t.other_status, t.normal,
    t.timeouts, t.crashes, e.connect, e.read, e.write, e.timeout, t.first_wrong))
end
"""


def body(code, policy):
    return json.dumps({"code": code, "input_data": {"n": 0}, "policy": policy}).replace('"n": 0', '"n": __N__')


def phase(server, name, seconds, connections, timeouts, crashes, workdir):
    script = os.path.join(workdir, name + ".lua")
    with open(script, "w") as f:
        f.write(LUA % {"normal": body(NORMAL, {"timeout_seconds": 5}),
                       "timeout": body(TIMEOUT, {"timeout_seconds": 0.2}),
                       "crash": body(CRASH, {"timeout_seconds": 5}),
                       "timeouts": timeouts, "crashes": crashes})
    rss = [server.rss_kb()]
    p = subprocess.Popen(["wrk", "-t2", "-c%d" % connections, "-d%ds" % seconds, "--timeout", "30s", "--latency",
                          "-s", script, "http://127.0.0.1:%d/v1/run" % server.port],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while p.poll() is None:
        time.sleep(1)
        rss.append(server.rss_kb())
    out = p.stdout.read()
    line = [x for x in out.splitlines() if x.startswith("SPR_RESULT ")]
    if p.returncode != 0 or not line:
        raise SystemExit("wrk failed:\n" + out)
    r = json.loads(line[0][len("SPR_RESULT "):])
    r["phase"] = name
    r["requests_per_second"] = round(r["requests"] / r["seconds"], 1)
    r["rss_kb_start"], r["rss_kb_end"], r["rss_kb_max"] = rss[0], rss[-1], max(rss)
    return r


def idle(server):
    return wait_for(lambda: "spr_runs_in_flight 0" in server.request("GET", "/metrics")[2].decode(), 300)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json")
    ap.add_argument("--rss-growth-mb", type=int, default=64)
    args = ap.parse_args()
    server = Server("--workers", str(args.workers), "--max-concurrent", str(args.connections * 2),
                    "--read-timeout", "30")
    failures = []
    results = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            phase(server, "warm-up", 2, args.connections, 0, 0, tmp)
            for name, t, c in [("plain", 0, 0), ("mixed", 0.10, 0.05)]:
                # wrk stops with requests outstanding: their runs finish first, so that each phase
                # starts from an idle server.
                idle(server)
                r = phase(server, name, args.seconds, args.connections, t, c, tmp)
                results.append(r)
                print(json.dumps(r), flush=True)
                if r["wrong"] or r["server_errors"] or r["other_status"]:
                    failures.append("%s: %d wrong answers (%d 5xx, %d other statuses); first: %s" % (
                        name, r["wrong"], r["server_errors"], r["other_status"], r["first_wrong"]))
                if r["connect_errors"] or r["read_errors"] or r["write_errors"] or r["socket_timeouts"]:
                    failures.append("%s: socket errors %s" % (name, {k: r[k] for k in (
                        "connect_errors", "read_errors", "write_errors", "socket_timeouts")}))
                if r["normal"] == 0 or (t and (r["timeouts"] == 0 or r["crashes"] == 0)):
                    failures.append("%s: a kind of run never answered: %s" % (name, r))
                if r["rss_kb_end"] - r["rss_kb_start"] > args.rss_growth_mb * 1024:
                    failures.append("%s: server RSS grew from %d to %d KiB" % (name, r["rss_kb_start"],
                                                                               r["rss_kb_end"]))
        # Once the runs wrk left behind have answered, the service is idle and ready.
        if not idle(server):
            failures.append("runs still in flight after the load")
        if not wait_for(lambda: server.request("GET", "/readyz")[0] == 200, 60):
            failures.append("not ready after the load")
    finally:
        code = server.stop()
        if code != 0:
            failures.append("the server exited %s on SIGTERM" % code)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"load_average": os.getloadavg(), "results": results}, f, indent=1)
    for f in failures:
        print("FAIL " + f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
