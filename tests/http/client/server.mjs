// Starts `safe-py-runner http` on a free loopback port for the Node tests; resolves once it listens.
import { spawn } from "node:child_process";
import readline from "node:readline";

export function startServer(args = []) {
  const cli = process.env.SPR_CLI;
  if (!cli) throw new Error("SPR_CLI must name the safe-py-runner binary");
  const proc = spawn(cli, ["http", "--listen", "127.0.0.1:0", ...args], { stdio: ["ignore", "ignore", "pipe"] });
  const log = [];
  let stopping = false;
  // A server that ends without stop() says how, with what it wrote that is not a log entry (a sanitizer's report).
  proc.once("close", (code, signal) => {
    if (stopping) return;
    const text = log.filter((e) => e.text !== undefined).map((e) => e.text).join("\n");
    console.error(`safe-py-runner http (pid ${proc.pid}) ended (${code ?? signal}) without the test's stop(); ` +
      `its other output:\n${text || "(none)"}`);
  });
  return new Promise((resolve, reject) => {
    const lines = readline.createInterface({ input: proc.stderr });
    lines.on("line", (line) => {
      let entry;
      try { entry = JSON.parse(line); } catch { entry = { text: line }; }
      log.push(entry);
      if (entry.event === "listening") {
        resolve({
          url: `http://127.0.0.1:${entry.port}`,
          log,
          stop: () => new Promise((done) => {
            stopping = true;
            proc.once("exit", (code) => done(code));
            proc.kill("SIGTERM");
          }),
        });
      }
    });
    proc.once("exit", (code) => reject(new Error(`the server exited (${code}) before listening: ${JSON.stringify(log)}`)));
  });
}
