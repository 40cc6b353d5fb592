"""``--push-to-hub ORG/NAME``: upload an exported folder through huggingface_hub."""

from __future__ import annotations

import logging
from pathlib import Path

from fedit.errors import FeditError

logger = logging.getLogger(__name__)


def push_folder(folder: Path, repo_id: str, *, private: bool = False) -> str:
    """Create ``repo_id`` if needed and upload ``folder``; the repo URL. Offline, without a token or
    on any hub error: one line saying so (the exported folder stays complete)."""
    try:
        from huggingface_hub import HfApi

        api = HfApi()
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                          commit_message="Upload model exported by fedit")
    except Exception as exc:  # offline mode, no network, no/invalid token, permissions...
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise FeditError(f"--push-to-hub {repo_id}: cannot upload to the Hugging Face hub ({reason}); the export "
                         f"in {folder} is complete: upload it later with `hf upload {repo_id} {folder}`") from None
    logger.info("uploaded %s to %s", folder, url)
    return str(url)
