"""A scripted OpenAI-compatible chat server on loopback: the stand-in for the LLM behind pi.

Only the model's brain is scripted; pi, pi-autoresearch, the tools they run and our harness are
the real ones. pi always streams (`stream: true`), so every reply is SSE: chunks with
`delta.content` or `delta.tool_calls`, then a chunk with `finish_reason`, then `[DONE]`.

The script is a JSON list of turns. Which turn answers a request is decided by the
conversation itself, not by a counter in the server: turn i answers a request whose messages
hold i assistant messages. So a pi that restarts and resumes its session picks up exactly where
the conversation was, and a retried request gets the same answer.

A turn is {"tool": NAME, "args": {...}} or {"text": "..."}. In tool arguments, a string
"{metric:NAME}" becomes the number in the latest `METRIC NAME=<x>` line of a tool result (0 when
there is none), so the scripted model logs what the benchmark really printed, and the string
"{verdict}" becomes "keep" when the latest benchmark output's VERDICT line says keep, else
"discard" (an honest agent's log_experiment status). After the last
turn the server answers with plain text ("Script finished."), which leaves pi idle.

    python tests/scripted_model.py --script turns.json --port-file port.txt --requests requests.jsonl

--faults FILE injects a provider fault while FILE says so (read on every request, so a soak
can switch it on and off): {"rate_limit_until": EPOCH, "retry_after": true|false} answers
429 until then, with a Retry-After header (and the "try again in Ns" hint OpenAI puts in the
message) when retry_after is true, else a bare "rate limit reached".
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PLACEHOLDER = re.compile(r"^\{metric:([\w.µ]+)\}$")


def _text_of(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "\n".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""


def latest_metric(messages: list[dict], name: str) -> float:
    pattern = re.compile(rf"^METRIC\s+{re.escape(name)}=(\S+)\s*$", re.M)
    for message in reversed(messages):
        if message.get("role") in ("tool", "toolResult", "user"):
            found = pattern.findall(_text_of(message))
            if found:
                return float(found[-1])
    return 0.0


def latest_verdict(messages: list[dict]) -> str:
    """keep when the latest tool result's VERDICT line says keep; else discard (also when that
    result has no VERDICT: a run cut short is never a keep, whatever an earlier one said)."""
    for message in reversed(messages):
        if message.get("role") in ("tool", "toolResult"):
            found = re.findall(r"^VERDICT\s+(\w+)", _text_of(message), re.M)
            return "keep" if found and found[-1] == "keep" else "discard"
    return "discard"


def fill(value, messages: list[dict]):
    if value == "{verdict}":
        return latest_verdict(messages)
    if isinstance(value, str):
        match = PLACEHOLDER.match(value)
        return latest_metric(messages, match[1]) if match else value
    if isinstance(value, dict):
        return {k: fill(v, messages) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, messages) for v in value]
    return value


def reply_chunks(turn: dict, messages: list[dict], index: int) -> list[dict]:
    base = {"id": f"chatcmpl-scripted-{index}", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": "scripted"}

    def chunk(delta: dict, finish=None) -> dict:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    if "tool" in turn:
        call = {"index": 0, "id": f"call_{index}", "type": "function",
                "function": {"name": turn["tool"], "arguments": json.dumps(fill(turn.get("args", {}), messages))}}
        return [chunk({"role": "assistant", "content": None, "tool_calls": [call]}),
                chunk({}, "tool_calls")]
    return [chunk({"role": "assistant", "content": turn.get("text", "")}), chunk({}, "stop")]


def rate_limited(faults: Path | None) -> tuple[bool, int | None]:
    """(answer 429 now?, the Retry-After seconds to announce or None)."""
    try:
        fault = json.loads(faults.read_text(encoding="utf-8")) if faults else {}
    except (OSError, ValueError):
        return False, None
    left = float(fault.get("rate_limit_until") or 0) - time.time()
    if left <= 0:
        return False, None
    return True, (max(1, int(left + 0.999)) if fault.get("retry_after") else None)


class ScriptedModel(BaseHTTPRequestHandler):
    script: list[dict] = []
    requests_log: Path | None = None
    faults: Path | None = None
    lock = threading.Lock()

    def log_message(self, *args) -> None:  # quiet
        pass

    def _json(self, code: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/models"):
            self._json(200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]})
        else:
            self._json(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            request = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self._json(400, {"error": {"message": "bad json"}})
            return
        messages = request.get("messages") or []
        index = sum(1 for m in messages if m.get("role") == "assistant")
        limited, retry_after = rate_limited(self.faults)
        if limited:
            hint = f" Please try again in {retry_after}s." if retry_after else ""
            body = json.dumps({"error": {"message": f"Rate limit reached for requests.{hint}",
                                         "type": "requests", "code": "rate_limit_exceeded"}}).encode()
            self.send_response(429)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if retry_after:
                self.send_header("Retry-After", str(retry_after))
            self.end_headers()
            self.wfile.write(body)
            if self.requests_log is not None:
                with self.lock, open(self.requests_log, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"at": time.time(), "turn": index, "status": 429,
                                        "retry_after": retry_after}) + "\n")
            return
        turn = self.script[index] if index < len(self.script) else {"text": "Script finished."}
        if self.requests_log is not None:
            with self.lock, open(self.requests_log, "a", encoding="utf-8") as f:
                f.write(json.dumps({"at": time.time(), "turn": index, "reply": turn,
                                    "tools": [t.get("function", {}).get("name") for t in request.get("tools") or []],
                                    "last": _text_of(messages[-1])[-4000:] if messages else ""}) + "\n")
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        for chunk in reply_chunks(turn, messages, index):
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Scripted OpenAI-compatible model server (loopback only).")
    parser.add_argument("--script", type=Path, required=True, help="JSON list of turns")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free one)")
    parser.add_argument("--port-file", type=Path, default=None, help="write the bound port here")
    parser.add_argument("--requests", type=Path, default=None, help="append one JSON line per request here")
    parser.add_argument("--faults", type=Path, default=None, help="a JSON file that switches provider faults on")
    args = parser.parse_args(argv)
    ScriptedModel.script = json.loads(args.script.read_text(encoding="utf-8"))
    ScriptedModel.requests_log = args.requests
    ScriptedModel.faults = args.faults
    server = ThreadingHTTPServer(("127.0.0.1", args.port), ScriptedModel)
    server.daemon_threads = True
    if args.port_file:
        args.port_file.write_text(str(server.server_address[1]))
    print(f"scripted model on 127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
