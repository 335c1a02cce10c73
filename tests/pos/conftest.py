"""Every pos test seals under a key of its own session, never the user's ~/.config one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pos import sealed


@pytest.fixture(autouse=True, scope="session")
def seal_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(sealed.KEY_ENV, str(tmp_path_factory.mktemp("seal") / "pos-seal.key"))
        yield
