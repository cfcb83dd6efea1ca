"""Real Aitor 1.1.2 agents for tests, offline: an LLM slot that refuses to be called (no network).

``pytest.importorskip("aitor")`` before using :func:`offline_agent` (``aitor==1.1.2`` is in the ``dev`` extra).
"""

from __future__ import annotations

from typing import Any


def offline_agent(name: str, session_id: str) -> Any:
    """A real ``aitor.react_agent.ReactAgent`` whose LLM raises if anything asks it for a completion."""
    from aitor.llm import BaseLLM
    from aitor.react_agent import ReactAgent

    class NoLLM(BaseLLM):  # type: ignore[misc]
        async def generate(self, messages: Any, **kwargs: Any) -> Any:
            raise AssertionError("offline test: the LLM must not be called")

        async def generate_json(self, messages: Any, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError("offline test: the LLM must not be called")

        async def generate_structured(self, messages: Any, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError("offline test: the LLM must not be called")

    return ReactAgent(name=name, session_id=session_id, llm=NoLLM({}))


def add_exchange(agent: Any, question: str, answer: str, tool: str = "calculator", ok: bool = True) -> None:
    """One user/assistant exchange with a think step and a tool execution, through Aitor's own API."""
    from aitor.memory import ReasoningStep
    from aitor.tools import ToolExecution, ToolResult

    mem = agent.get_memory()
    mem.add_message("user", question)
    mem.add_reasoning_step(ReasoningStep(step_type="think", content=f"use {tool}"))
    mem.add_tool_execution(ToolExecution(
        tool_name=tool, params={"q": question},
        result=ToolResult(success=ok, result=answer if ok else None, error=None if ok else f"Tool {tool} failed",
                          execution_time=0.125, tool_name=tool),
        timestamp=None))
    mem.add_message("assistant", answer)
