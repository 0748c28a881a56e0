"""The live pygame display of ``caril drive``: watch a policy drive, see the confidence correction act,
take over by hand, record datasets, videos and screenshots.

* :class:`DriveDisplay` (``window``): the window's state, ``process_event`` for the keys, rollout hooks and
  ``render(surface)``;
* :class:`DriveSession` (``session``): the loop that steps the simulator under the display;
* ``panels``, ``overlays``, ``minimap``, ``telemetry``, ``draw``: what the HUD draws and how; ``video`` and
  ``recording``: the files V and R write.

Only ``pygame.display`` and ``pygame.font`` are initialised (:func:`init_pygame`), never ``pygame.init()``.
"""

from training.display._pygame import init_pygame
from training.display.session import DRIVE_POLICIES, DriveResult, DriveSession, make_drive_policy, policy_bins
from training.display.window import KEYS, DisplayConfig, DriveDisplay

__all__ = ["DRIVE_POLICIES", "KEYS", "DisplayConfig", "DriveDisplay", "DriveResult", "DriveSession",
           "init_pygame", "make_drive_policy", "policy_bins"]
