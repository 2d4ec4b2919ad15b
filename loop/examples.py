"""The owner's own words for a draft: `training.retrieval` over what the database holds of the owner.

At drafting time the index holds every reply the owner has given: imported replies, replies written
by hand in business chats, the texts kept through verdicts. It is built from the same examples the
nightly cycle builds (loop.collect), so a draft's prompt carries examples chosen by the rules its
training rows were built with. One index per owner, rebuilt when the owner's writing or verdicts
change (`repo.own_words_version`); building is cheap (bm25s: about a second for thousands of replies).
Off (generation.retrieved_examples = contact_examples = 0), nothing is read.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from datetime import datetime, timezone
from typing import Any

from sqlalchemy.engine import Engine

from loop.collect import conversation_thread, feedback_examples, writing_examples
from storage import repo
from storage.db import read_scope
from training.prompt import Conversation
from training.retrieval import Budget, ReplyIndex, past_replies

logger = logging.getLogger(__name__)


class OwnWords:
    """Per-owner reply indexes for drafting; thread-safe (drafts run in worker threads)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._indexes: dict[int, tuple[tuple[int, ...], ReplyIndex]] = {}
        self._lock = threading.Lock()

    def index(self, owner_db_id: int) -> ReplyIndex:
        """The owner's index, rebuilt when their writing or verdicts changed since it was built."""
        with read_scope(self.engine) as session:
            version = repo.own_words_version(session=session, owner_id=owner_db_id)
            with self._lock:
                cached = self._indexes.get(owner_db_id)
            if cached is not None and cached[0] == version:
                return cached[1]
            writing = writing_examples(repo.writing_samples(session=session, owner_id=owner_db_id),
                                       repo.business_sample_contacts(session=session, owner_id=owner_db_id),
                                       repo.business_sample_conversations(session=session, owner_id=owner_db_id))
            feedback = feedback_examples(repo.feedback_rows(session=session, owner_id=owner_db_id))
        index = ReplyIndex(past_replies(feedback, writing))
        with self._lock:
            self._indexes[owner_db_id] = (version, index)
        logger.info("indexed %d replies of owner %s for drafting", len(index), owner_db_id)
        return index

    def for_draft(self, conversation: Conversation, *, owner_db_id: int, conversation_id: int,
                  generation: Any, now: datetime | None = None) -> Conversation:
        """`conversation` with the owner's past replies that drafting it gets (unchanged when off)."""
        budget = Budget.of(generation)
        if not budget.enabled:
            return conversation
        examples = self.index(owner_db_id).choose(
            conversation, thread=conversation_thread(conversation_id), at=now or datetime.now(timezone.utc),
            similar=budget.similar, recent=budget.recent, max_chars=budget.max_chars)
        return dataclasses.replace(conversation, examples=examples)
