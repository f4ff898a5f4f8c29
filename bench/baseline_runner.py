"""Baseline child for spr-bench: the original's model, one fresh interpreter per run.

Reads {"code": str, "input_data": object} as JSON on stdin, executes the code in a fresh
dict holding input_data, and prints {"ok": bool, "result": ...} as one JSON line on stdout.
"""
import json
import sys


def main() -> int:
    request = json.load(sys.stdin)
    namespace = {"input_data": request.get("input_data", {}), "result": None}
    try:
        exec(request["code"], namespace)
        reply = {"ok": True, "result": namespace.get("result")}
    except BaseException as exc:  # the snippet's failure is data, not our crash
        reply = {"ok": False, "result": None, "error": f"{type(exc).__name__}: {exc}"}
    try:
        text = json.dumps(reply)
    except (TypeError, ValueError) as exc:
        text = json.dumps({"ok": False, "result": None, "error": f"result is not JSON: {exc}"})
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
