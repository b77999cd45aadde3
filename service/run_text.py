"""Text about a run that the CLI and the dashboard both show."""
from __future__ import annotations


def environments_text(environments: list[dict]) -> str:
    """What the run's attempts ran with, one line per distinct setting: "attempts 1, 2: cpu (Intel Xeon), 2
    threads, torch 2.14.1 on host" (a line per setting, so a change between attempts shows)."""
    lines: dict[str, list[str]] = {}
    for env in environments:
        device = env.get("device", "?") + (f" ({env['device_name']})" if env.get("device_name") else "")
        threads = f", {env['threads']} CPU thread{'s' * (env.get('threads') != 1)}" if "threads" in env else ""
        text = f"{device}{threads}, torch {env.get('torch', '?')}" + (f" on {env['host']}" if env.get("host") else "")
        lines.setdefault(text, []).append(str(env.get("attempt", "?")))
    return "\n".join(f"attempt{'s' * (len(a) > 1)} {', '.join(a)}: {text}" for text, a in lines.items())
