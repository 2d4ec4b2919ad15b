"""`repo.own_words_version`: what the drafting index of the owner's past replies is rebuilt on."""

from __future__ import annotations

from storage import repo
from storage.db import session_scope
from storage.models import SampleKind, WritingSampleCreate
from tests.storage.test_storage import make_draft


def version(engine, owner_id: int) -> tuple[int, ...]:
    with session_scope(engine) as session:
        return repo.own_words_version(session=session, owner_id=owner_id)


def test_the_version_moves_with_added_and_edited_writing_and_with_verdicts(engine) -> None:
    with session_scope(engine) as session:
        draft = make_draft(session)
        owner_id = draft.owner_id
    empty = version(engine, owner_id)
    assert empty == (0, 0, 0, 0, 0, 0)
    with session_scope(engine) as session:
        repo.add_writing_samples(session=session, owner_id=owner_id, samples=[WritingSampleCreate(
            kind=SampleKind.reply, text="see u at 8", prompt="when?", source="test")])
    added = version(engine, owner_id)
    assert added != empty and version(engine, owner_id) == added  # unchanged words, unchanged version
    with session_scope(engine) as session:
        sample = repo.writing_samples(session=session, owner_id=owner_id)[0]
        repo.update_writing_sample_text(session=session, sample_id=sample.id, text="see u at 8!!")
    edited = version(engine, owner_id)
    assert edited != added
    with session_scope(engine) as session:
        repo.record_feedback(session=session, owner_id=owner_id, draft_id=draft.id, kind="edit", text="hey you")
    assert version(engine, owner_id) != edited
    assert version(engine, owner_id + 1) == (0, 0, 0, 0, 0, 0)  # another owner's words are not counted
