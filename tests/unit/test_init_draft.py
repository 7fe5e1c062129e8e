"""`volkeep init`'s summary of what it drafted."""

from __future__ import annotations

from daemon.actions.init import Draft, DraftPolicy, HostVolume


def test_the_summary_of_one_policy_of_one_volume_is_singular() -> None:
    draft = Draft("", (DraftPolicy("standalone", None, (HostVolume("app_db"),)),))
    assert draft.summary() == "1 policy (standalone) of 1 volume"
