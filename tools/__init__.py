"""The tool contract and the tools (sandboxed Python, search, URL fetch, SQL, files, email).
Never imports `graph` or `app`."""

from guardrails.policy import Risk
from tools.contract import Tool, ToolContext, ToolError, ToolOutcome, Toolset, Untrusted
from tools.ledger import Ledger

__all__ = ["Ledger", "Risk", "Tool", "ToolContext", "ToolError", "ToolOutcome", "Toolset",
           "Untrusted"]
