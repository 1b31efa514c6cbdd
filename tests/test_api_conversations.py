"""Tasks of one conversation run one after the other; `reject` and `interrupt` as documented;
a poison task ends in the dead-letter queue, marked FAILED with the reason."""

from __future__ import annotations

import asyncio

from langchain_core.messages import AIMessage

from app.queue import TaskQueue
from graph.testing import call, plan, reply, verdict
from tests.service import Service


async def test_second_message_waits_and_sees_the_first_result(service: Service) -> None:
    service.model.add(plan("Wait, then answer"), call("wait_a_while", {"seconds": 0.5}),
                      reply("The first answer is 41."), verdict(True),
                      plan("Answer"), reply("Then the second is 42."), verdict(True))
    first = await service.submit("First question.")
    second = await service.submit("Second question.", conversation_id=first["conversation_id"])
    assert second["conversation_id"] == first["conversation_id"]
    await asyncio.wait_for(service.outbox.slow.wait(), timeout=20)
    assert (await service.task(second["id"]))["status"] == "QUEUED", "it waits its turn"

    done = await service.wait_status(second["id"], "SUCCEEDED")
    first_done = await service.task(first["id"])
    assert first_done["finished_at"] <= done["started_at"], "never at the same time"
    second_act = service.model.calls[5].messages
    assert any(isinstance(m, AIMessage) and m.content == "The first answer is 41."
               for m in second_act), "the second task sees the first one's result"


async def test_reject_strategy_refuses_while_busy(service: Service) -> None:
    service.model.add(plan("Wait"), call("wait_a_while", {"seconds": 0.5}), reply("done"),
                      verdict(True))
    first = await service.submit("Busy work.")
    await asyncio.wait_for(service.outbox.slow.wait(), timeout=20)
    response = await service.http.post("/v1/tasks", headers=service.auth(), json={
        "input": "Me too!", "conversation_id": first["conversation_id"],
        "multitask_strategy": "reject"})
    assert response.status_code == 409
    assert response.json()["active_task"] == first["id"]
    await service.wait_status(first["id"], "SUCCEEDED")
    assert int(await service.deps.db.fetchval("SELECT count(*) FROM tasks")) == 1


async def test_interrupt_strategy_cancels_the_running_task_then_starts(service: Service) -> None:
    service.model.add(plan("Wait"), call("wait_a_while", {"seconds": 1}),
                      plan("Answer instead"), reply("New answer."), verdict(True))
    first = await service.submit("Long thing.")
    await asyncio.wait_for(service.outbox.slow.wait(), timeout=20)
    second = await service.submit("Never mind, do this.", conversation_id=first["conversation_id"],
                                  multitask_strategy="interrupt")
    done = await service.wait_status(second["id"], "SUCCEEDED")
    cancelled = await service.task(first["id"])
    assert cancelled["status"] == "CANCELLED"
    assert cancelled["finished_at"] <= done["started_at"]
    assert done["final_output"] == "New answer."


async def test_poison_task_goes_to_the_dlq_and_is_marked_failed(service: Service) -> None:
    # Each failed delivery comes back after a back-off of 1, 2, 4, 8 s (not the 30 s the
    # worker hides a message for), and the last goes straight to the dead-letter queue.
    queue = service.deps.queue
    service.model.add(*[RuntimeError("the model client crashed") for _ in range(5)])
    created = await service.submit("Crash every time.")
    failed = await service.wait_status(created["id"], "FAILED", timeout=60)
    assert failed["error"]["type"] == "delivery_failed"
    assert "failed 5 deliveries" in failed["error"]["message"]
    assert "RuntimeError: the model client crashed" in failed["error"]["message"]

    dlq_url = queue.url + "-dlq"
    dlq = TaskQueue(queue._client, dlq_url)
    async with asyncio.timeout(30):
        while (await dlq.attributes())["ApproximateNumberOfMessages"] != "1":
            await asyncio.sleep(0.2)
