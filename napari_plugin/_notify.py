"""Messages for the user: logged always, shown as napari notifications inside napari.

Only notifies through napari when napari is already imported (i.e. we run inside it),
so the readers and jobs stay usable and testable without napari or Qt.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("wsi_seg_napari")


def _napari_notifications():  # type: ignore[no-untyped-def]
    if "napari" not in sys.modules:
        return None
    from napari.utils import notifications

    return notifications


def warn(message: str) -> None:
    log.warning(message)
    notifications = _napari_notifications()
    if notifications is not None:
        notifications.show_warning(message)


def info(message: str) -> None:
    log.info(message)
    notifications = _napari_notifications()
    if notifications is not None:
        notifications.show_info(message)


def error(message: str) -> None:
    log.error(message)
    notifications = _napari_notifications()
    if notifications is not None:
        notifications.show_error(message)
