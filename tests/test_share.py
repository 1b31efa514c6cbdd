"""Share links: the owner makes a link, anyone with it reads a redacted, read-only HTML
transcript; revoking it (or a link that never existed) is a 404 page; nobody else can make
or revoke links to someone's conversation."""

from __future__ import annotations

import httpx

from graph.testing import call, plan, reply, verdict
from tests.service import Service

SECRET = "sk-proj-" + "Zq8RkT2mWx9LpV4nYc7HbJ3dFg6S"
INPUT = "Email <b>ana.lopez@example.com</b> the report, she is on +1 415 555 0134"


async def _finished_conversation(service: Service) -> dict[str, object]:
    service.model.add(
        plan("Look up the price", "Answer"),
        call("lookup_price", {"item": "widget", "note": f"key {SECRET}"}),
        reply("A widget costs 3 EUR; I told ana.lopez@example.com."), verdict(True))
    task = await service.submit(INPUT)
    done = await service.wait_status(task["id"], "SUCCEEDED", "FAILED")
    assert done["status"] == "SUCCEEDED", done["error"]
    return done


async def test_a_share_link_shows_a_redacted_transcript_until_revoked(service: Service) -> None:
    task = await _finished_conversation(service)
    conversation = task["conversation_id"]
    created = await service.http.post(f"/v1/conversations/{conversation}/share",
                                      headers=service.auth())
    assert created.status_code == 201, created.text
    link = created.json()
    assert link["url"] == f"{service.base_url}/share/{link['token']}"

    async with httpx.AsyncClient() as anonymous:  # no key, no cookie
        page = await anonymous.get(link["url"])
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-store"
    html = page.text
    assert "lookup_price" in html and "A widget costs 3 EUR" in html
    assert "1. Look up the price" in html and "widget" in html
    assert "ana.lopez" not in html and "555 0134" not in html and SECRET not in html
    assert "[REDACTED:email]" in html and "[REDACTED:phone]" in html
    assert "<b>" not in html and "&lt;b&gt;" in html, "task text is escaped, not markup"
    assert "<script" not in html

    revoked = await service.http.delete(
        f"/v1/conversations/{conversation}/share/{link['id']}", headers=service.auth())
    assert revoked.status_code == 204
    gone = await service.http.get(f"/share/{link['token']}")
    assert gone.status_code == 404 and "has been revoked" in gone.text
    assert gone.headers["content-type"].startswith("text/html")
    again = await service.http.delete(
        f"/v1/conversations/{conversation}/share/{link['id']}", headers=service.auth())
    assert again.status_code == 204, "revoking twice is harmless"


async def test_only_the_owner_can_share_or_revoke(service: Service) -> None:
    task = await _finished_conversation(service)
    conversation = task["conversation_id"]
    other = service.auth(service.other_key)
    refused = await service.http.post(f"/v1/conversations/{conversation}/share", headers=other)
    assert refused.status_code == 404
    assert refused.headers["content-type"] == "application/problem+json"
    link = (await service.http.post(f"/v1/conversations/{conversation}/share",
                                    headers=service.auth())).json()
    not_theirs = await service.http.delete(
        f"/v1/conversations/{conversation}/share/{link['id']}", headers=other)
    assert not_theirs.status_code == 404
    assert (await service.http.get(f"/share/{link['token']}")).status_code == 200, \
        "another user's attempt left the link alone"
    anonymous = await service.http.post(f"/v1/conversations/{conversation}/share")
    assert anonymous.status_code == 401


async def test_unknown_links_are_404_pages(service: Service) -> None:
    for token in ("nope", "shr_" + "A" * 43, "shr_%3Cscript%3E"):
        page = await service.http.get(f"/share/{token}")
        assert page.status_code == 404, token
        assert "does not exist or has been revoked" in page.text
    missing = await service.http.post(
        "/v1/conversations/00000000-0000-0000-0000-000000000000/share", headers=service.auth())
    assert missing.status_code == 404
