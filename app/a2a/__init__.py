"""Cadre as an A2A server (the `a2a-sdk`): the agent card at `/.well-known/agent-card.json`
and JSON-RPC at `/a2a`, A2A 1.0 (`SendMessage`, `SendStreamingMessage`, `GetTask`,
`CancelTask`, `SubscribeToTask`, push-notification configs) and the same under A2A 0.3's
names (`message/send`, `message/stream`, `tasks/get`, `tasks/cancel`, `tasks/resubscribe`,
`tasks/pushNotificationConfig/*`)."""

from app.a2a.routes import mount_a2a

__all__ = ["mount_a2a"]
