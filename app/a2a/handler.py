"""The A2A request handler: every method answered from `TaskService` with the caller's
principal, as the REST API answers, so ownership, limits, policy and what is shown are the
same. Tasks are read from Postgres and followed on their Redis streams; nothing lives only in
this process."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import uuid
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass
from typing import Any

from a2a.server.context import ServerCallContext
from a2a.server.request_handlers.request_handler import RequestHandler, validate_request_params
from a2a.server.tasks.push_notification_config_store import normalize_push_notification_config
from a2a.types import (
    AgentCard,
    CancelTaskRequest,
    DeleteTaskPushNotificationConfigRequest,
    GetExtendedAgentCardRequest,
    GetTaskPushNotificationConfigRequest,
    GetTaskRequest,
    InternalError,
    InvalidParamsError,
    InvalidRequestError,
    ListTaskPushNotificationConfigsRequest,
    ListTaskPushNotificationConfigsResponse,
    ListTasksRequest,
    ListTasksResponse,
    Message,
    SendMessageRequest,
    SubscribeToTaskRequest,
    Task,
    TaskNotCancelableError,
    TaskNotFoundError,
    TaskPushNotificationConfig,
    TaskState,
    UnsupportedOperationError,
)
from a2a.utils.errors import A2AError, ExtendedAgentCardNotConfiguredError
from a2a.utils.task import apply_history_length, validate_history_length
from fastapi import UploadFile

from app.a2a.convert import StreamEvent, a2a_task, decision_of, message_input
from app.a2a.follow import follow
from app.a2a.push import MAX_CONFIGS, Pusher, PushStore, check_push_url
from app.auth import Principal
from app.problems import Problem
from app.service import TaskService
from app.streams import StreamHub, StreamsFull
from graph.status import TaskStatus

log = logging.getLogger("cadre.a2a")

PRINCIPAL = "cadre_principal"
BASE_URL = "cadre_base_url"


@dataclass(frozen=True, kw_only=True)
class _Started:
    """What a message started or resumed: the task as it is now, and where to follow it."""

    task: Task
    after: str | None
    known: dict[str, str]


class CadreHandler(RequestHandler):
    """A2A over Cadre's task service. `state` is the app's state (its service, streams, file
    and artifact stores), read at request time."""

    def __init__(self, state: Any) -> None:
        self.state = state

    # -- tasks ---------------------------------------------------------------------------------

    @validate_request_params
    async def on_get_task(self, params: GetTaskRequest, context: ServerCallContext) -> Task:
        validate_history_length(params)
        with _problems():
            task = await self._task(context, params.id)
        return apply_history_length(task, params)

    @validate_request_params
    async def on_cancel_task(self, params: CancelTaskRequest,
                             context: ServerCallContext) -> Task:
        with _problems():
            task = await self.service.owned(_who(context), params.id)
            if TaskStatus(task["status"]).terminal:
                raise TaskNotCancelableError(f"task {params.id} has ended "
                                             f"({task['status'].lower()})")
            await self.service.cancel(_who(context), params.id)
            return await self._task(context, params.id)

    async def on_list_tasks(self, params: ListTasksRequest,
                            context: ServerCallContext) -> ListTasksResponse:
        raise UnsupportedOperationError("list your tasks with GET /v1/tasks")

    # -- messages ------------------------------------------------------------------------------

    @validate_request_params
    async def on_message_send(self, params: SendMessageRequest,
                              context: ServerCallContext) -> Task:
        """Blocks until the task ends or waits for input (at most CADRE_SSE_MAX_SECONDS),
        unless `returnImmediately`."""
        validate_history_length(params.configuration)
        wait = not params.configuration.return_immediately
        started = await self._start(params, context, follows=wait)
        if wait:
            async for _ in self._follow(started, context):
                pass
            with _problems():
                started = _Started(task=await self._task(context, started.task.id), after=None,
                                   known={})
        return apply_history_length(started.task, params.configuration)

    @validate_request_params
    async def on_message_send_stream(self, params: SendMessageRequest, context: ServerCallContext
                                     ) -> AsyncGenerator[StreamEvent]:
        validate_history_length(params.configuration)
        started = await self._start(params, context, follows=True)
        yield apply_history_length(started.task, params.configuration)
        async for update in self._follow(started, context):
            yield update

    @validate_request_params
    async def on_subscribe_to_task(self, params: SubscribeToTaskRequest,
                                   context: ServerCallContext) -> AsyncGenerator[StreamEvent]:
        with _problems():
            after = await self.streams.events.last_id(params.id)
            task = await self._task(context, params.id)
            if task.status.state in (TaskState.TASK_STATE_COMPLETED, TaskState.TASK_STATE_FAILED,
                                     TaskState.TASK_STATE_CANCELED):
                raise UnsupportedOperationError(f"task {params.id} has ended: read it with "
                                                "GetTask")
            self._admit()
            known = {a.name: a.sha256 for a in await self.state.artifacts.list(params.id)}
        yield task
        started = _Started(task=task, after=after, known=known)
        async for update in self._follow(started, context):
            yield update

    async def _start(self, params: SendMessageRequest, context: ServerCallContext, *,
                     follows: bool) -> _Started:
        """Submit the message as a new task, or, when it names a task waiting for a person,
        decide the approval with it."""
        message, config = params.message, params.configuration
        push = config.task_push_notification_config \
            if config.HasField("task_push_notification_config") else None
        with _problems():
            if push is not None:
                await check_push_url(push.url, self.service.webhook_allow_private)
            if follows:
                self._admit()
            if message.task_id:
                started = await self._reply(message, context)
            else:
                started = await self._submit(message, context)
            if push is not None:
                await self._set_push(started.task.id, push, context, after=started.after,
                                     ended=False)
        return started

    async def _submit(self, message: Message, context: ServerCallContext) -> _Started:
        who, given = _who(context), message_input(message)
        conversation = None
        if message.context_id:
            # A client may name a new context itself: it becomes the conversation's id.
            try:
                uuid.UUID(message.context_id)
            except ValueError:
                raise InvalidParamsError("contextId must be a UUID (a Cadre conversation id)"
                                         ) from None
            conversation = await self.service.open_conversation(who, message.context_id,
                                                                given.text)
        uploads = [(await self.state.files.save(who.user_id, UploadFile(
            io.BytesIO(data), filename=name)))["id"] for name, data in given.files]
        row = await self.service.submit(who, given.text, files=uploads,
                                        conversation_id=conversation)
        # As inserted (submitted), whatever a worker has made of it since: the stream says that.
        return _Started(task=a2a_task(row, [], context.state[BASE_URL]), after=None, known={})

    async def _reply(self, message: Message, context: ServerCallContext) -> _Started:
        who, task_id = _who(context), message.task_id
        task = await self.service.get(who, task_id)
        if message.context_id and message.context_id != task["conversation_id"]:
            raise InvalidParamsError(f"task {task_id} is not in context {message.context_id}")
        status = TaskStatus(task["status"])
        if status.terminal:
            raise UnsupportedOperationError(
                f"task {task_id} has ended ({status.lower()}); a new message with this "
                "contextId and no taskId continues the conversation")
        if status is not TaskStatus.PENDING_APPROVAL:
            raise UnsupportedOperationError(f"task {task_id} is {status.lower()}: it asks "
                                            "(input-required) when it needs an answer")
        if any(p.WhichOneof("content") in ("raw", "url") for p in message.parts):
            raise InvalidParamsError("a reply to a waiting task carries the decision only, "
                                     "no files")
        decision = decision_of(message)
        pending = [a["id"] for a in task["approvals"] if a["status"] == "PENDING"]
        approval_id = decision.approval_id or (pending[-1] if pending else None)
        if approval_id is None:
            raise UnsupportedOperationError(f"task {task_id} has no approval pending")
        after = await self.streams.events.last_id(task_id)
        known = {a.name: a.sha256 for a in await self.state.artifacts.list(task_id)}
        await self.service.decide(who, task_id, approval_id,
                                  decision.model_copy(update={"approval_id": approval_id}))
        return _Started(task=await self._task(context, task_id), after=after, known=known)

    async def _follow(self, started: _Started, context: ServerCallContext
                      ) -> AsyncGenerator[StreamEvent]:
        """As the REST stream: at most CADRE_SSE_MAX_SECONDS, then the client subscribes
        again to go on."""
        settings = self.state.deps.settings
        deadline = asyncio.get_running_loop().time() + settings.sse_max_seconds
        async with contextlib.aclosing(follow(
                self.streams, self.state.artifacts, started.task.id, started.task.context_id,
                after=started.after, base_url=context.state[BASE_URL], known=started.known,
                heartbeat=settings.sse_heartbeat_seconds, deadline=deadline)) as updates:
            async for _, update in updates:
                yield update

    # -- push notifications --------------------------------------------------------------------

    @validate_request_params
    async def on_create_task_push_notification_config(
            self, params: TaskPushNotificationConfig, context: ServerCallContext,
    ) -> TaskPushNotificationConfig:
        with _problems():
            task = await self.service.owned(_who(context), params.task_id)
            after = await self.streams.events.last_id(params.task_id)
            return await self._set_push(params.task_id, params, context, after=after,
                                        ended=TaskStatus(task["status"]).terminal)

    @validate_request_params
    async def on_get_task_push_notification_config(
            self, params: GetTaskPushNotificationConfigRequest, context: ServerCallContext,
    ) -> TaskPushNotificationConfig:
        for config in await self._configs(params.task_id, context):
            if config.id == params.id:
                return config
        raise TaskNotFoundError(f"task {params.task_id} has no push config {params.id!r}")

    @validate_request_params
    async def on_list_task_push_notification_configs(
            self, params: ListTaskPushNotificationConfigsRequest, context: ServerCallContext,
    ) -> ListTaskPushNotificationConfigsResponse:
        return ListTaskPushNotificationConfigsResponse(
            configs=await self._configs(params.task_id, context))

    @validate_request_params
    async def on_delete_task_push_notification_config(
            self, params: DeleteTaskPushNotificationConfigRequest, context: ServerCallContext,
    ) -> None:
        with _problems():
            await self.service.owned(_who(context), params.task_id)
        await PushStore(self.service.db).delete(params.task_id, params.id)

    async def _configs(self, task_id: str, context: ServerCallContext
                       ) -> list[TaskPushNotificationConfig]:
        with _problems():
            await self.service.owned(_who(context), task_id)
        return await PushStore(self.service.db).configs(task_id)

    async def _set_push(self, task_id: str, config: TaskPushNotificationConfig,
                        context: ServerCallContext, *, after: str | None, ended: bool,
                        ) -> TaskPushNotificationConfig:
        """Keep the config for the caller's task and watch the task from the event after
        `after`; an `ended` task is not watched."""
        config = normalize_push_notification_config(task_id, config)
        await check_push_url(config.url, self.service.webhook_allow_private)
        if not await PushStore(self.service.db).put(config, context.state[BASE_URL],
                                                    after=after, done=ended):
            raise InvalidParamsError(f"a task has at most {MAX_CONFIGS} push configs")
        pusher: Pusher | None = getattr(self.state, "a2a_pusher", None)
        if pusher is not None and not ended:
            pusher.watch(task_id)
        return config

    # -- the rest ------------------------------------------------------------------------------

    async def on_get_extended_agent_card(self, params: GetExtendedAgentCardRequest,
                                         context: ServerCallContext) -> AgentCard:
        raise ExtendedAgentCardNotConfiguredError

    @property
    def service(self) -> TaskService:
        return self.state.service  # type: ignore[no-any-return]

    @property
    def streams(self) -> StreamHub:
        return self.state.streams  # type: ignore[no-any-return]

    def _admit(self) -> None:
        try:
            self.streams.admit()
        except StreamsFull as full:
            raise InternalError(str(full), data={"retryAfter": str(full.retry_after)}) from None

    async def _task(self, context: ServerCallContext, task_id: str) -> Task:
        task = await self.service.get(_who(context), task_id)
        files = await self.state.artifacts.list(str(task["id"]))
        return a2a_task(task, files, context.state[BASE_URL])


def _who(context: ServerCallContext) -> Principal:
    return context.state[PRINCIPAL]  # type: ignore[no-any-return]


@contextlib.contextmanager
def _problems() -> Iterator[None]:
    """The service's problems as A2A errors: a JSON-RPC error, with the problem's type, status
    and Retry-After in its details."""
    try:
        yield
    except A2AError:
        raise
    except Problem as problem:
        data = {"problem": problem.kind, "status": str(problem.status),
                **({"retryAfter": problem.headers["Retry-After"]}
                   if "Retry-After" in problem.headers else {})}
        error: A2AError
        if problem.status == 404:
            error = TaskNotFoundError(problem.detail, data)
        elif problem.status == 409:
            error = UnsupportedOperationError(problem.detail, data)
        elif problem.status == 429:
            error = InvalidRequestError(problem.detail, data)
        elif problem.status >= 500:
            error = InternalError(problem.detail, data)
        else:
            error = InvalidParamsError(problem.detail, data)
        raise error from None
    except Exception:
        # What broke (a database or Redis error) is for the logs, not for the client.
        log.exception("A2A request failed")
        raise InternalError("internal error; the server logged it") from None
