"""The LangGraph agent graph: state, nodes (plan, act, approve, execute, observe, verify),
the typed run record, model factory, budgets and termination. Never imports `app`."""

from graph.approvals import ApprovalDecision, ApprovalRequest
from graph.builder import compile_graph, postgres_checkpointer
from graph.deps import GraphDeps
from graph.llm import ModelConfig, make_chat_model
from graph.run import RunResult, task_input
from graph.status import TaskStatus

__all__ = ["ApprovalDecision", "ApprovalRequest", "GraphDeps", "ModelConfig", "RunResult",
           "TaskStatus", "compile_graph", "make_chat_model", "postgres_checkpointer",
           "task_input"]
