/**
 * autogolf's guard for pi: the harness, not the agent, decides what a tool call may do.
 *
 * Loaded after pi-autoresearch (`pi -e agent/node_modules/pi-autoresearch -e agent/guard`,
 * autogolf/agent/launch.py). Before every run_experiment, log_experiment, edit, write and bash
 * call it asks the harness -- `python -m autogolf.agent.gate TOOL` with the call's input on
 * stdin -- and blocks the call with the harness's reason, or lets it run with the arguments
 * the harness set (run_experiment's timeout_seconds, log_experiment's metric). The rules live
 * in Python (autogolf/agent/gate*.py) where they are tested; this file only carries the call
 * there and back. Anything that goes wrong here blocks: a guard that cannot decide fails closed.
 */

import type { ExtensionAPI } from "@earendil-works/pi-coding-agent";
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

const GUARDED = new Set(["run_experiment", "log_experiment", "edit", "write", "bash"]);
// A decision reads the ledger and, for a keep, hashes the trainer: well under a second;
// the limit only stops a hung interpreter from hanging pi.
const GATE_TIMEOUT_MS = 60_000;

// The project this guard ships in: agent/guard/ is two levels below its root.
const ROOT = fs.realpathSync(path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", ".."));
const PYTHON = path.join(ROOT, ".venv", "bin", "python");

interface Decision {
	allow: boolean;
	kind?: string;
	reason?: string;
	input?: Record<string, unknown>;
}

function ask(tool: string, input: unknown): Decision {
	try {
		const out = execFileSync(PYTHON, ["-m", "autogolf.agent.gate", tool, "--root", ROOT], {
			cwd: ROOT,
			input: JSON.stringify(input ?? {}),
			encoding: "utf8",
			timeout: GATE_TIMEOUT_MS,
			stdio: ["pipe", "pipe", "pipe"],
		});
		const decision = JSON.parse(out.trim().split("\n").pop() ?? "") as Decision;
		if (typeof decision.allow !== "boolean") throw new Error(`no decision in ${out.slice(0, 200)}`);
		return decision;
	} catch (e) {
		const why = e instanceof Error ? e.message : String(e);
		return { allow: false, reason: `the autogolf guard could not decide (${why.slice(0, 300)}); blocked` };
	}
}

export default function (pi: ExtensionAPI) {
	pi.on("tool_call", async (event, ctx) => {
		if (!GUARDED.has(event.toolName)) return undefined;
		const decision = ask(event.toolName, event.input);
		if (!decision.allow) {
			if (ctx.hasUI) ctx.ui.notify(`autogolf guard: ${event.toolName} blocked`, "warning");
			return { block: true, reason: `autogolf guard: ${decision.reason ?? "blocked"}` };
		}
		// in place: pi runs the tool with this very object (extensions.md, tool_call)
		const input = event.input as Record<string, unknown>;
		for (const [key, value] of Object.entries(decision.input ?? {})) input[key] = value;
		return undefined;
	});
}
