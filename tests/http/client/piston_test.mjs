// The real npm `piston-client`, unchanged, against our /api/v2 endpoints.
import assert from "node:assert/strict";
import piston from "piston-client";
import { startServer } from "./server.mjs";

const server = await startServer(["--timeout", "5", "--memory-mb", "256"]);
const client = piston({ server: server.url });
const cases = [];
const test = (name, fn) => cases.push([name, fn]);

test("runtimes: one python runtime with its aliases", async () => {
  const runtimes = await client.runtimes();
  assert.equal(runtimes.length, 1);
  assert.equal(runtimes[0].language, "python");
  assert.deepEqual([...runtimes[0].aliases].sort(), ["py", "python3"]);
  assert.match(runtimes[0].version, /^3\.\d+\.\d+$/);
});

test("hello world", async () => {
  const r = await client.execute("python", 'print("Hello, World!")');
  assert.equal(r.language, "python");
  assert.equal(r.run.stdout, "Hello, World!\n");
  assert.equal(r.run.stderr, "");
  assert.equal(r.run.output, "Hello, World!\n");
  assert.equal(r.run.code, 0);
  assert.equal(r.run.signal, null);
});

test("stdin", async () => {
  const r = await client.execute("python", "print(input()[::-1])", { stdin: "abc\n" });
  assert.equal(r.run.stdout, "cba\n");
  assert.equal(r.run.code, 0);
});

test("args become sys.argv[1:] (the client's default too)", async () => {
  const r = await client.execute("python", "import sys\nprint(sys.argv[1:])", { args: ["x", "y z"] });
  assert.equal(r.run.stdout, "['x', 'y z']\n");
  const d = await client.execute("python", "import sys\nprint(sys.argv[1:])");
  assert.equal(d.run.stdout, "['1', '2', '3']\n");
});

test("a timeout: killed, code null, signal SIGKILL", async () => {
  const r = await client.execute("python", "print('started', flush=True)\nwhile True: pass", { runTimeout: 500 });
  assert.equal(r.run.code, null);
  assert.equal(r.run.signal, "SIGKILL");
  assert.equal(r.run.stdout, "started\n");
});

test("an exception: code 1, the error on stderr", async () => {
  const r = await client.execute("python", "print('before')\nraise ValueError('boom')");
  assert.equal(r.run.code, 1);
  assert.equal(r.run.stdout, "before\n");
  assert.match(r.run.stderr, /ValueError: boom/);
  assert.equal(r.run.output, "before\n" + r.run.stderr);
});

test("a memory blow-up under run_memory_limit", async () => {
  const r = await client.execute("python", "b = bytearray(1024 * 1024 * 1024)\nprint('survived')",
                                 { runMemoryLimit: 64 * 1024 * 1024 });
  assert.notEqual(r.run.code, 0);
  assert.equal(r.run.stdout, "");
  assert.match(r.run.stderr, /Memory limit exceeded/);
  const after = await client.execute("python", "print('next')");
  assert.equal(after.run.stdout, "next\n");
});

test("limits above the operator's are refused as Piston refuses them: 400 with a message", async () => {
  const r = await client.execute("python", "print(1)", { runTimeout: 60000 });
  assert.match(r.message, /timeout_seconds/);
  assert.equal(r.run, undefined);
});

test("an unknown language: 400 with a message, as Piston words it", async () => {
  // The client finds no version for ruby and sends none; Piston checks the version's presence first.
  const r = await client.execute("ruby", "puts 1");
  assert.equal(r.message, "version is required as a string");
  const v = await client.execute({ language: "ruby", version: "3.2.0" }, "puts 1");
  assert.equal(v.message, "ruby-3.2.0 runtime is unknown");
});

let failed = 0;
for (const [name, fn] of cases) {
  try {
    await fn();
    console.log(`ok   ${name}`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}\n${e.stack}`);
  }
}
const code = await server.stop();
assert.equal(code, 0, "the server exits 0 on SIGTERM");
console.log(`${cases.length - failed} of ${cases.length} passed`);
process.exit(failed ? 1 : 0);
