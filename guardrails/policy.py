"""Tool policy: who may call which tool, with which arguments, and whether a person must approve.

The policy is a TOML file (`guardrails/policy.toml` by default, CADRE_POLICY_FILE to use
another), read and validated when a worker starts. A call is decided by, in order:

1. the first `[[rules]]` entry that matches the caller's role, the tool and its argument
   conditions (`when` all hold, `unless` not all hold);
2. the role's `tools` table (a tool name, or "*" for every other tool);
3. the role's `risk` table, then the file's top-level `[risk]` table, by the tool's risk.

A file that is not valid -- bad TOML, an unknown tool, role, verdict or condition -- is a
`PolicyError` naming the file and line."""

from __future__ import annotations

import fnmatch
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import getaddresses
from pathlib import Path
from typing import Any, Literal, Protocol, get_args
from urllib.parse import urlsplit

from guardrails.tomlfile import TomlFile, read_text
from guardrails.verdict import Verdict, allow, deny, require_approval

Risk = Literal["read_only", "side_effect", "destructive"]
VerdictName = Literal["allow", "approve", "deny"]
RISKS: tuple[str, ...] = get_args(Risk)
VERDICTS: tuple[str, ...] = get_args(VerdictName)
ROLES = ("viewer", "analyst", "operator", "admin")
DEFAULT_FILE = Path(__file__).with_name("policy.toml")
# Argument names that hold email recipients, whatever the tool.
_RECIPIENT_ARGS = ("to", "cc", "bcc", "recipients")


@dataclass(frozen=True, kw_only=True)
class PolicyCall:
    """One proposed tool call, as the policy sees it."""

    role: str
    tool: str
    risk: Risk
    arguments: Mapping[str, Any]
    user_email: str = ""


class Policy(Protocol):
    def decide(self, call: PolicyCall) -> Verdict:
        """The verdict for this call."""
        ...


class PolicyError(ValueError):
    """A policy file that cannot be used; the message names the file and line."""


class DefaultPolicy:
    """Risk decides, for every role: read-only -> allow, side effect -> approve,
    destructive -> deny. What `guardrails/policy.toml` starts from."""

    def decide(self, call: PolicyCall) -> Verdict:
        return _by_risk(call, {"read_only": "allow", "side_effect": "approve",
                               "destructive": "deny"}, source="default")


def _by_risk(call: PolicyCall, table: Mapping[str, str], *, source: str) -> Verdict:
    return _verdict(table[call.risk], call, rule=f"{source}:{call.risk}",
                    reason=_RISK_REASONS[call.risk].format(tool=call.tool))


_RISK_REASONS = {
    "read_only": "`{tool}` only reads",
    "side_effect": "`{tool}` has side effects outside Cadre; a person must approve it",
    "destructive": "`{tool}` is destructive",
}


def _verdict(name: str, call: PolicyCall, *, rule: str, reason: str) -> Verdict:
    if name == "allow":
        return allow(rule=rule)
    if name == "approve":
        return require_approval(reason, rule=rule)
    return deny(f"{reason}; the {call.role} role may not use it here" if reason
                else f"the {call.role} role may not use `{call.tool}`", rule=rule)


# -- conditions --------------------------------------------------------------------------------


def _recipients(arguments: Mapping[str, Any]) -> list[str]:
    values: list[str] = []
    for name in _RECIPIENT_ARGS:
        value = arguments.get(name)
        if isinstance(value, str):
            values.append(value)
        elif isinstance(value, list):
            values.extend(str(v) for v in value)
    return [address.lower() for _, address in getaddresses(values) if address]


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


def _host_in(host: str, domains: Iterable[str]) -> bool:
    host = host.lower().rstrip(".")
    return any(host == d or host.endswith("." + d) for d in domains)


def _recipients_in_user_domain(expected: bool, call: PolicyCall) -> bool:
    recipients = _recipients(call.arguments)
    mine = _domain(call.user_email)
    holds = bool(recipients) and bool(mine) and all(_domain(a) == mine for a in recipients)
    return holds == expected


def _recipient_domains(domains: list[str], call: PolicyCall) -> bool:
    recipients = _recipients(call.arguments)
    return bool(recipients) and all(_host_in(_domain(a), domains) for a in recipients)


def _url_domains(domains: list[str], call: PolicyCall) -> bool:
    url = call.arguments.get("url")
    host = urlsplit(url).hostname if isinstance(url, str) else None
    return bool(host) and _host_in(str(host), domains)


def _argument_matches(patterns: dict[str, str], call: PolicyCall) -> bool:
    return all(fnmatch.fnmatchcase(str(call.arguments.get(name, "")), pattern)
               for name, pattern in patterns.items())


# name -> (check, what its value must be, a validator for that value)
_CONDITIONS: dict[str, tuple[Any, str, Any]] = {
    "recipients_in_user_domain": (_recipients_in_user_domain, "true or false",
                                  lambda v: isinstance(v, bool)),
    "recipient_domains": (_recipient_domains, "a list of domains",
                          lambda v: isinstance(v, list) and all(isinstance(d, str) for d in v)),
    "url_domains": (_url_domains, "a list of domains",
                    lambda v: isinstance(v, list) and all(isinstance(d, str) for d in v)),
    "arguments": (_argument_matches, "a table of argument name = glob pattern",
                  lambda v: isinstance(v, dict) and all(isinstance(p, str) for p in v.values())),
}


def _normalised(name: str, value: Any) -> Any:
    if name in ("recipient_domains", "url_domains"):
        return [d.lower().strip().lstrip("@").rstrip(".") for d in value]
    return value


@dataclass(frozen=True, kw_only=True)
class Rule:
    name: str
    roles: frozenset[str]
    tools: tuple[str, ...]
    verdict: VerdictName
    reason: str
    when: Mapping[str, Any] = field(default_factory=dict)
    unless: Mapping[str, Any] = field(default_factory=dict)

    def matches(self, call: PolicyCall) -> bool:
        if "*" not in self.roles and call.role not in self.roles:
            return False
        if not any(fnmatch.fnmatchcase(call.tool, t) for t in self.tools):
            return False
        if not all(_CONDITIONS[k][0](v, call) for k, v in self.when.items()):
            return False
        return not (self.unless and all(_CONDITIONS[k][0](v, call) for k, v in self.unless.items()))


@dataclass(frozen=True, kw_only=True)
class Role:
    name: str
    description: str = ""
    tools: Mapping[str, VerdictName] = field(default_factory=dict)
    risk: Mapping[str, VerdictName] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class FilePolicy:
    """A validated policy file."""

    source: str
    risk: Mapping[str, VerdictName]
    roles: Mapping[str, Role]
    rules: Sequence[Rule]

    def decide(self, call: PolicyCall) -> Verdict:
        role = self.roles.get(call.role)
        if role is None:
            return deny(f"the role {call.role!r} is not in the policy", rule="unknown-role")
        for rule in self.rules:
            if rule.matches(call):
                return _verdict(rule.verdict, call, rule=f"rule:{rule.name}",
                                reason=rule.reason or f"rule {rule.name}")
        for key in (call.tool, "*"):
            if key in role.tools:
                return _verdict(role.tools[key], call, rule=f"role:{role.name}:{key}",
                                reason=_RISK_REASONS[call.risk].format(tool=call.tool)
                                if role.tools[key] != "deny" else "")
        if call.risk in role.risk:
            return _by_risk(call, role.risk, source=f"role:{role.name}")
        return _by_risk(call, self.risk, source="risk")


# -- loading -----------------------------------------------------------------------------------


def load_policy(path: Path | None = None, *, known_tools: Iterable[str] | None = None) -> FilePolicy:
    """Read and validate a policy file (the bundled default when `path` is None). Tool names
    are checked against `known_tools` when given. Raises PolicyError naming file and line."""
    path = path or DEFAULT_FILE
    text = read_text(path, "policy file", PolicyError)
    return parse_policy(text, source=str(path), known_tools=known_tools)


def parse_policy(text: str, *, source: str = "<policy>",
                 known_tools: Iterable[str] | None = None) -> FilePolicy:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{source}: not valid TOML: {exc}") from None
    return _Validator(text, source, set(known_tools) if known_tools is not None else None).run(data)


class _Validator(TomlFile):
    def __init__(self, text: str, source: str, known: set[str] | None) -> None:
        super().__init__(text, source, error=PolicyError)
        self.known = known

    def verdict(self, value: Any, *, section: str | None, index: int = 0,
                token: str | None = None) -> VerdictName:
        if value not in VERDICTS:
            raise self.fail(f"unknown verdict {value!r}; use allow, approve or deny",
                            section=section, index=index, token=str(value))
        return value  # type: ignore[no-any-return]

    def tool(self, name: Any, *, section: str | None, index: int = 0) -> str:
        if not isinstance(name, str) or not name:
            raise self.fail(f"a tool name must be a string, not {name!r}", section=section,
                            index=index)
        if self.known is not None and name != "*" and not any(
                ch in name for ch in "*?[") and name not in self.known:
            raise self.fail(f"unknown tool {name!r}; known tools: {', '.join(sorted(self.known))}",
                            section=section, index=index, token=name)
        return name

    def risk_table(self, table: Any, *, section: str) -> dict[str, VerdictName]:
        if not isinstance(table, dict):
            raise self.fail(f"[{section}] must be a table of risk = verdict", section=section)
        out: dict[str, VerdictName] = {}
        for risk, value in table.items():
            if risk not in RISKS:
                raise self.fail(f"unknown risk {risk!r}; use {', '.join(RISKS)}", section=section,
                                token=risk)
            out[risk] = self.verdict(value, section=section, token=str(value))
        return out

    def run(self, data: dict[str, Any]) -> FilePolicy:
        unknown = set(data) - {"version", "risk", "roles", "rules"}
        if unknown:
            key = sorted(unknown)[0]
            raise self.fail(f"unknown top-level key {key!r}; expected version, risk, roles, rules",
                            token=key)
        if data.get("version", 1) != 1:
            raise self.fail(f"unsupported version {data['version']!r}; this Cadre reads version 1",
                            token="version")
        risk = {"read_only": "allow", "side_effect": "approve", "destructive": "deny"}
        risk.update(self.risk_table(data.get("risk", {}), section="risk"))
        roles = self.roles(data.get("roles", {}))
        rules = [self.rule(r, i, set(roles)) for i, r in enumerate(self.list_of_rules(data))]
        return FilePolicy(source=self.source, risk=risk, roles=roles,  # type: ignore[arg-type]
                          rules=rules)

    def list_of_rules(self, data: dict[str, Any]) -> list[Any]:
        rules = data.get("rules", [])
        if not isinstance(rules, list):
            raise self.fail("`rules` must be an array of tables: [[rules]]", token="rules")
        return rules

    def roles(self, table: Any) -> dict[str, Role]:
        if not isinstance(table, dict) or not table:
            raise self.fail("the policy needs a [roles.<name>] table per role", token="roles")
        missing = [r for r in ROLES if r not in table]
        if missing:
            raise self.fail(f"role(s) {', '.join(missing)} missing; every policy defines "
                            f"{', '.join(ROLES)}")
        roles = {}
        for name, body in table.items():
            section = f"roles.{name}"
            if not isinstance(body, dict):
                raise self.fail(f"[{section}] must be a table", section=section)
            extra = set(body) - {"description", "tools", "risk"}
            if extra:
                key = sorted(extra)[0]
                raise self.fail(f"unknown key {key!r} in [{section}]; expected description, "
                                "tools, risk", section=section, token=key)
            tools = body.get("tools", {})
            if not isinstance(tools, dict):
                raise self.fail(f"`tools` in [{section}] must be a table of tool = verdict",
                                section=section, token="tools")
            checked: dict[str, VerdictName] = {}
            for tool, value in tools.items():
                self.tool(tool, section=section)
                checked[tool] = self.verdict(value, section=section, token=str(value))
            roles[name] = Role(name=name, description=str(body.get("description", "")),
                               tools=checked,
                               risk=self.risk_table(body.get("risk", {}), section=f"{section}.risk")
                               if "risk" in body else {})
        return roles

    def rule(self, body: Any, index: int, roles: set[str]) -> Rule:
        section = "rules"
        if not isinstance(body, dict):
            raise self.fail("each [[rules]] entry must be a table", section=section, index=index)
        extra = set(body) - {"name", "roles", "tool", "tools", "when", "unless", "verdict", "reason"}
        if extra:
            key = sorted(extra)[0]
            raise self.fail(f"unknown key {key!r} in a rule; expected name, roles, tool(s), "
                            "when, unless, verdict, reason", section=section, index=index, token=key)
        name = str(body.get("name") or f"#{index + 1}")
        if "verdict" not in body:
            raise self.fail(f"rule {name} has no verdict", section=section, index=index)
        verdict = self.verdict(body["verdict"], section=section, index=index,
                               token=str(body["verdict"]))
        raw_tools = body.get("tools", body.get("tool"))
        if raw_tools is None:
            raise self.fail(f"rule {name} names no tool (tool = \"...\")", section=section,
                            index=index)
        tools = tuple(self.tool(t, section=section, index=index)
                      for t in (raw_tools if isinstance(raw_tools, list) else [raw_tools]))
        raw_roles = body.get("roles", ["*"])
        if isinstance(raw_roles, str):
            raw_roles = [raw_roles]
        for role in raw_roles:
            if role != "*" and role not in roles:
                raise self.fail(f"rule {name} names unknown role {role!r}", section=section,
                                index=index, token=str(role))
        return Rule(name=name, roles=frozenset(raw_roles), tools=tools, verdict=verdict,
                    reason=str(body.get("reason", "")),
                    when=self.conditions(body.get("when", {}), name, index, "when"),
                    unless=self.conditions(body.get("unless", {}), name, index, "unless"))

    def conditions(self, table: Any, rule: str, index: int, key: str) -> dict[str, Any]:
        if not isinstance(table, dict):
            raise self.fail(f"`{key}` in rule {rule} must be a table of conditions",
                            section="rules", index=index, token=key)
        out = {}
        for name, value in table.items():
            if name not in _CONDITIONS:
                raise self.fail(f"unknown condition {name!r} in rule {rule}; known: "
                                f"{', '.join(_CONDITIONS)}", section="rules", index=index,
                                token=name)
            _, expected, valid = _CONDITIONS[name]
            if not valid(value):
                raise self.fail(f"condition {name} in rule {rule} must be {expected}",
                                section="rules", index=index, token=name)
            out[name] = _normalised(name, value)
        return out
