"""The LangGraph agent graph: state, nodes (plan, act, approve, execute, observe, verify),
model factory, budgets and termination. Never imports `app`."""
