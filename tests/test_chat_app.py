"""`edgespool chat` in a real terminal: tmux runs it in a pane (its own tmux server socket), send-keys types, and
capture-pane reads the screen. The replies are the greedy replies of the Python API to the same conversation (a
fresh model each time, so the chat's KV reuse is checked against a full recompute); Ctrl-C stops a long reply
without quitting; /stats shows the reused prompt tokens; /reset starts over; /quit exits."""
from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from edgespool import load

from serving_common import smol_bundle

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)")


class Pane:
    def __init__(self, cmd: list[str]) -> None:
        self.sock = f"es-{uuid.uuid4().hex[:8]}"
        self.tmux(["new-session", "-d", "-s", "chat", "-x", "220", "-y", "60", shlex.join(cmd)])

    def tmux(self, args: list[str]) -> str:
        return subprocess.run(["tmux", "-L", self.sock, *args], check=True, capture_output=True, text=True).stdout

    def screen(self) -> str:
        return self.tmux(["capture-pane", "-p", "-J", "-S", "-2000", "-t", "chat"])

    def send(self, *keys: str) -> None:
        self.tmux(["send-keys", "-t", "chat", *keys])

    def wait_for(self, pred, timeout: float = 120.0) -> str:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            s = self.screen()
            if pred(s):
                return s
            time.sleep(0.1)
        raise AssertionError(f"timed out; screen:\n{self.screen()}")

    def prompts(self, s: str) -> int:
        return sum(1 for ln in s.splitlines() if ln.startswith("> ") or ln == ">")

    def alive(self) -> bool:
        return "chat" in subprocess.run(["tmux", "-L", self.sock, "list-sessions"], capture_output=True,
                                        text=True).stdout

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.sock, "kill-server"], capture_output=True)


def flat(s: str) -> str:
    return " ".join(s.split())


def greedy_reply(bundle, messages, n):
    m = load(bundle)
    try:
        return m.create_chat_completion(messages, max_tokens=n, temperature=0)["choices"][0]["message"]["content"]
    finally:
        m.close()


N = 1000  # reply cap: each turn fits the kept KV cache (prompt + N rounded up to 1024), so it is reused; the
# story is still going at Ctrl-C


def test_chat_in_tmux(tmp_path_factory):
    bundle = smol_bundle(tmp_path_factory)
    p = Pane([sys.executable, "-m", "edgespool", "chat", str(bundle), "-t", "0", "-n", str(N)])
    try:
        s = p.wait_for(lambda s: p.prompts(s) >= 1)
        assert "edgespool chat:" in s
        q1 = "What is the capital of France?"
        p.send(q1, "Enter")
        s = p.wait_for(lambda s: p.prompts(s) >= 2)
        conv = [{"role": "user", "content": q1}]
        r1 = greedy_reply(bundle, conv, N)
        assert flat(r1) in flat(s)
        q2 = "And of Italy?"
        p.send(q2, "Enter")
        s = p.wait_for(lambda s: p.prompts(s) >= 3)
        conv += [{"role": "assistant", "content": r1}, {"role": "user", "content": q2}]
        assert flat(greedy_reply(bundle, conv, N)) in flat(s)
        p.send("/stats", "Enter")
        s = p.wait_for(lambda s: "reused)" in s)
        reused = int(s.split("reused)")[0].rsplit("(", 1)[1].split()[0])
        assert reused > 20  # the first turn's prompt and reply came from the kept KV cache
        # Ctrl-C stops a long reply; the chat goes on
        p.send("/reset", "Enter")
        p.wait_for(lambda s: "[conversation reset]" in s)
        n_prompts = p.prompts(p.screen())
        story = "Write a very long story about a dragon, with many chapters."
        p.send(story, "Enter")
        # Ctrl-C once the reply has begun (a fixed sleep raced it: 300 tokens take under a second on a fast core)
        p.wait_for(lambda s: s.rsplit(story, 1)[-1].strip() != "", timeout=60)
        p.send("C-c")
        s = p.wait_for(lambda s: "[stopped]" in s and p.prompts(s) > n_prompts, timeout=60)
        assert p.alive()
        p.send("Say hi.", "Enter")
        s = p.wait_for(lambda s: p.prompts(s) > n_prompts + 1)
        # after /reset and the stopped reply, the conversation is [story request, partial reply, "Say hi."]:
        # the reply exists and the app still answers
        assert p.alive()
        p.send("/quit", "Enter")
        t0 = time.monotonic()
        while p.alive() and time.monotonic() - t0 < 15:
            time.sleep(0.1)
        assert not p.alive()
    finally:
        p.close()
