"""Where a run's stage outputs are: shared by the analysis scripts here."""

import json
import os
import subprocess


def stage_dirs(distillery, recipe, store):
    """Stage name -> its output folder in `store`, from one
    `distillery plan --json` (the keys; the folders exist once run)."""
    out = subprocess.run(
        [distillery, "plan", recipe, "--store", store, "--json"],
        check=True, capture_output=True, text=True,
    ).stdout
    return {
        s["name"]: os.path.join(store, "store", s["key"], "out")
        for s in json.loads(out)["stages"]
    }
