"""The tool policy file: the default policy's role x tool matrix, argument conditions, and bad
files failing with the line named."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from app.errors import ConfigError
from app.settings import Settings
from app.tooling import worker_policy
from guardrails import Allow, Deny, PolicyCall, PolicyError, RequireApproval, load_policy
from guardrails.policy import DEFAULT_FILE, parse_policy
from tools import Toolset

KNOWN = {"search", "python", "sql", "describe_schema", "fetch_url", "send_email", "drop_table",
         "remember", "recall"}
RISK = {"search": "read_only", "python": "read_only", "sql": "read_only",
        "fetch_url": "read_only", "send_email": "side_effect", "drop_table": "destructive",
        "remember": "side_effect", "recall": "read_only"}
EXTERNAL = {"to": ["someone@elsewhere.org"], "subject": "s", "body": "b"}
OWN = {"to": ["bob@example.com"], "cc": ["Carol <carol@example.com>"], "subject": "s", "body": "b"}


def _decide(policy: Any, role: str, tool: str, arguments: dict[str, Any] | None = None) -> str:
    verdict = policy.decide(PolicyCall(role=role, tool=tool, risk=RISK[tool],
                                       arguments=arguments or {}, user_email="ana@example.com"))
    return {Allow: "allow", RequireApproval: "approve", Deny: "deny"}[type(verdict)]


# role, tool, arguments, expected verdict under guardrails/policy.toml
MATRIX = [
    ("viewer", "search", None, "allow"),
    ("viewer", "sql", None, "allow"),
    ("viewer", "fetch_url", None, "allow"),
    ("viewer", "python", None, "deny"),
    ("viewer", "send_email", OWN, "deny"),
    ("viewer", "send_email", EXTERNAL, "deny"),
    ("viewer", "drop_table", None, "deny"),
    ("analyst", "search", None, "allow"),
    ("analyst", "python", None, "allow"),
    ("analyst", "send_email", OWN, "allow"),
    ("analyst", "send_email", EXTERNAL, "approve"),
    ("analyst", "drop_table", None, "deny"),
    ("operator", "python", None, "allow"),
    ("operator", "send_email", OWN, "allow"),
    ("operator", "send_email", EXTERNAL, "approve"),
    ("operator", "drop_table", None, "approve"),
    ("admin", "sql", None, "allow"),
    ("admin", "send_email", OWN, "allow"),
    ("admin", "send_email", EXTERNAL, "approve"),
    ("admin", "drop_table", None, "approve"),
    # Memory: the user's own store, for every role.
    ("viewer", "remember", None, "allow"),
    ("viewer", "recall", None, "allow"),
    ("analyst", "remember", None, "allow"),
    ("admin", "remember", None, "allow"),
]


@pytest.mark.parametrize(("role", "tool", "arguments", "expected"), MATRIX)
def test_the_default_policy_matrix(role: str, tool: str, arguments: dict[str, Any] | None,
                                   expected: str) -> None:
    policy = load_policy(known_tools=KNOWN)
    assert _decide(policy, role, tool, arguments) == expected


def test_verdicts_say_why_and_which_rule() -> None:
    policy = load_policy(known_tools=KNOWN)
    own = policy.decide(PolicyCall(role="analyst", tool="send_email", risk="side_effect",
                                   arguments=OWN, user_email="ana@example.com"))
    assert own == Allow(rule="rule:email-own-domain")
    external = policy.decide(PolicyCall(role="analyst", tool="send_email", risk="side_effect",
                                        arguments=EXTERNAL, user_email="ana@example.com"))
    assert isinstance(external, RequireApproval) and external.rule == "risk:side_effect"
    assert "a person must approve" in external.reason
    code = policy.decide(PolicyCall(role="viewer", tool="python", risk="read_only", arguments={}))
    assert isinstance(code, Deny) and code.rule == "role:viewer:python"
    assert "viewer role may not use `python`" in code.message
    mixed = {"to": ["bob@example.com", "eve@elsewhere.org"]}
    assert _decide(policy, "analyst", "send_email", mixed) == "approve", \
        "one outside recipient is enough to need approval"
    nobody = policy.decide(PolicyCall(role="intern", tool="search", risk="read_only", arguments={}))
    assert isinstance(nobody, Deny) and "not in the policy" in nobody.message


CUSTOM = """
version = 1
[roles.viewer]
[roles.analyst]
[roles.operator]
[roles.admin]

[[rules]]
name = "fetch-listed-sites"
tool = "fetch_url"
unless = { url_domains = ["python.org", "Example.com"] }
verdict = "deny"
reason = "fetch_url may only read python.org and example.com"

[[rules]]
name = "partners"
roles = ["analyst"]
tool = "send_email"
unless = { recipient_domains = ["partner.example"] }
verdict = "deny"
reason = "analysts email partners only"

[[rules]]
name = "read-only-sql"
tools = ["sql"]
when = { arguments = { query = "SELECT [*]*" } }
verdict = "approve"
reason = "wide selects need a look"
"""


@pytest.mark.parametrize(("role", "tool", "arguments", "expected"), [
    ("analyst", "fetch_url", {"url": "https://docs.python.org/3/"}, "allow"),
    ("analyst", "fetch_url", {"url": "https://example.com/a"}, "allow"),
    ("analyst", "fetch_url", {"url": "https://python.org.evil.test/"}, "deny"),
    ("analyst", "fetch_url", {"url": "https://evil.test/?python.org"}, "deny"),
    ("admin", "fetch_url", {"url": "not a url"}, "deny"),
    ("analyst", "send_email", {"to": ["x@partner.example"]}, "approve"),
    ("analyst", "send_email", {"to": ["x@partner.example", "y@else.org"]}, "deny"),
    ("operator", "send_email", {"to": ["y@else.org"]}, "approve"),
    ("viewer", "sql", {"query": "SELECT * FROM orders"}, "approve"),
    ("viewer", "sql", {"query": "SELECT id FROM orders"}, "allow"),
])
def test_argument_conditions(role: str, tool: str, arguments: dict[str, Any], expected: str) -> None:
    policy = parse_policy(CUSTOM, known_tools=KNOWN)
    assert _decide(policy, role, tool, arguments) == expected


BAD = [
    ("version = 1\n[roles.viewer\n", r"not valid TOML: .*line 2"),
    (CUSTOM.replace('tool = "fetch_url"', 'tool = "fetch_pages"'),
     r"line 10: unknown tool 'fetch_pages'"),
    (CUSTOM.replace('verdict = "approve"', 'verdict = "maybe"'),
     r"line 27: unknown verdict 'maybe'; use allow, approve or deny"),
    (CUSTOM.replace("url_domains", "url_hosts"), r"line 11: unknown condition 'url_hosts'"),
    (CUSTOM.replace('roles = ["analyst"]', 'roles = ["intern"]'),
     r"line 17: rule partners names unknown role 'intern'"),
    (CUSTOM.replace("[roles.admin]\n", ""), r"role\(s\) admin missing"),
    (CUSTOM.replace("[roles.viewer]\n", '[roles.viewer]\ntools = { python = "nope" }\n'),
     r"line 4: unknown verdict 'nope'"),
    (CUSTOM.replace("[roles.viewer]\n", "[roles.viewer]\nrisk = { harmless = \"allow\" }\n"),
     r"line 4: unknown risk 'harmless'"),
    (CUSTOM.replace('reason = "wide selects need a look"', 'reasn = "typo"'),
     r"line 28: unknown key 'reasn' in a rule"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_policy_files_name_the_line(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse_policy(text, source="policy.toml", known_tools=KNOWN)


async def test_a_worker_refuses_to_start_with_a_bad_policy(tmp_path: Path) -> None:
    bad = tmp_path / "policy.toml"
    await asyncio.to_thread(bad.write_text, CUSTOM.replace('tool = "fetch_url"',
                                                           'tool = "fetch_pages"'))
    settings = await asyncio.to_thread(Settings.of, policy_file=bad)
    with pytest.raises(ConfigError, match=r"policy.toml, line 10: unknown tool 'fetch_pages'.*"
                                          r"CADRE_POLICY_FILE"):
        await asyncio.to_thread(worker_policy, settings, Toolset())
    missing = await asyncio.to_thread(Settings.of, policy_file=tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read it"):
        await asyncio.to_thread(worker_policy, missing, Toolset())
    default = await asyncio.to_thread(worker_policy, await asyncio.to_thread(Settings.of), Toolset())
    assert default.source == str(DEFAULT_FILE), "the bundled default knows every built-in tool"


async def test_cadre_policy_check(tmp_path: Path, clean_env: dict[str, str]) -> None:
    from tests.cli import run_cadre

    good = await run_cadre("policy", "check", env=clean_env, cwd=tmp_path)
    assert good.code == 0, good.stderr
    assert "valid -- 4 roles, 2 rule(s)" in good.stdout
    assert "viewer    read_only allow, side_effect deny, destructive deny; python deny" in good.stdout
    bad = tmp_path / "policy.toml"
    await asyncio.to_thread(bad.write_text, CUSTOM.replace('verdict = "approve"', 'verdict = "maybe"'))
    refused = await run_cadre("policy", "check", str(bad), env=clean_env, cwd=tmp_path)
    assert refused.code == 2 and "line 27: unknown verdict 'maybe'" in refused.stderr
    assert "Traceback" not in refused.stderr
