"""Where a run's stage outputs are: shared by the analysis scripts here."""

import json
import os
import subprocess


def stage_dirs(distillery, recipe, store, overrides=()):
    """Stage name -> its output folder in `store`, from one
    `distillery plan --json` (the keys; the folders exist once run).
    `overrides`: the run's `--set PATH=VALUE` values, which the keys
    depend on."""
    sets = [arg for value in overrides for arg in ("--set", value)]
    out = subprocess.run(
        [distillery, "plan", recipe, "--store", store, "--json", *sets],
        check=True, capture_output=True, text=True,
    ).stdout
    return {
        s["name"]: os.path.join(store, "store", s["key"], "out")
        for s in json.loads(out)["stages"]
    }
