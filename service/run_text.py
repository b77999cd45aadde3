"""Text about a run that the CLI and the dashboard both show."""
from __future__ import annotations


def environments_text(environments: list[dict]) -> str:
    """What the run's attempts ran with, one line per distinct setting: "attempts 1, 2: cpu (Intel Xeon), 2
    threads, torch 2.14.1 on host" (a line per setting, so a change between attempts shows). Entries go in the
    order of their ``n`` (runs_repo.environment_number: an entry stored without one counts by its place). Once
    attempt numbers repeat (a retry starts them again, a job giving its run back returns its attempt), each entry
    is named by its start too: "starts 1, 2, 3 (attempts 1, 2, 1): …", "start 4 (attempt 2): …"."""
    ordered = sorted(((_number(env, i), env) for i, env in enumerate(environments)), key=lambda item: item[0])
    known = [a for _, env in ordered if isinstance(a := env.get("attempt"), int)]
    numbered = any(b <= a for a, b in zip(known, known[1:]))
    lines: dict[str, list[tuple[str, str]]] = {}
    for n, env in ordered:
        device = env.get("device", "?") + (f" ({env['device_name']})" if env.get("device_name") else "")
        threads = f", {env['threads']} CPU thread{'s' * (env.get('threads') != 1)}" if "threads" in env else ""
        text = f"{device}{threads}, torch {env.get('torch', '?')}" + (f" on {env['host']}" if env.get("host") else "")
        lines.setdefault(text, []).append((str(n), str(env.get("attempt", "?"))))
    return "\n".join(_label(entries, numbered) + f": {text}" for text, entries in lines.items())


def _label(entries: list[tuple[str, str]], numbered: bool) -> str:
    """'attempts 1, 2', or with ``numbered`` 'starts 3, 4 (attempts 1, 2)' ('start 3 (attempt 1)' for one)."""
    plural = "s" * (len(entries) > 1)
    attempts = f"attempt{plural} {', '.join(a for _, a in entries)}"
    return f"start{plural} {', '.join(n for n, _ in entries)} ({attempts})" if numbered else attempts


def _number(env: dict, index: int) -> int:
    """The entry's n; its place in the list (1 first) when it has none (as runs_repo.environment_number)."""
    n = env.get("n")
    return n if isinstance(n, int) else index + 1
