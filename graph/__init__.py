"""The LangGraph agent graph: state, nodes (plan, act, approve, execute, observe, verify),
model factory, budgets and termination. Never imports `app`."""

from graph.builder import compile_graph, postgres_checkpointer
from graph.deps import GraphDeps
from graph.llm import ModelConfig, make_chat_model
from graph.run import RunResult, task_input

__all__ = ["GraphDeps", "ModelConfig", "RunResult", "compile_graph", "make_chat_model",
           "postgres_checkpointer", "task_input"]
