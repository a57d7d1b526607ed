#!/usr/bin/env bash
# Renders a `distillery report` page in headless Chromium and checks that the
# screenshot is not blank (more than a handful of colors, and a fair share of
# pixels that are not the background).
#
#   scripts/screenshot_report.sh REPORT.html [OUT.png] [WIDTHxHEIGHT]
#
# Installs nothing: needs `chromium` (or `chromium-browser`,
# `google-chrome`) on the PATH or in /usr/bin, and python3 (stdlib only).
# Exit status: 0 the page rendered, 1 the screenshot is blank or missing,
# 2 usage, 3 no Chromium here (not a failure of the report).
set -euo pipefail

if [[ $# -lt 1 || $# -gt 3 ]]; then
    echo "usage: $0 REPORT.html [OUT.png] [WIDTHxHEIGHT]" >&2
    exit 2
fi
report=$(realpath "$1")
out=${2:-${report%.html}.png}
size=${3:-1280x2400}
[[ -f "$report" ]] || { echo "no such file: $report" >&2; exit 2; }

browser=""
for candidate in /usr/bin/chromium chromium chromium-browser google-chrome; do
    if command -v "$candidate" >/dev/null 2>&1; then
        browser=$(command -v "$candidate")
        break
    fi
done
if [[ -z "$browser" ]]; then
    echo "no Chromium found; skipping the screenshot" >&2
    exit 3
fi

profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
out_abs=$(realpath -m "$out")
mkdir -p "$(dirname "$out_abs")"
rm -f "$out_abs"
# The page fetches nothing; the flags keep Chromium itself off the network
# and away from the user's profile.
timeout 120 "$browser" --headless --no-sandbox --disable-gpu --disable-quic \
    --no-first-run --disable-background-networking --disable-component-update \
    --disable-sync --hide-scrollbars --user-data-dir="$profile" \
    --screenshot="$out_abs" --window-size="${size/x/,}" \
    "file://$report" >/dev/null 2>&1 || true
[[ -s "$out_abs" ]] || { echo "Chromium wrote no screenshot" >&2; exit 1; }

python3 - "$out_abs" <<'PY'
import struct, sys, zlib

path = sys.argv[1]
data = open(path, "rb").read()
if data[:8] != b"\x89PNG\r\n\x1a\n":
    sys.exit(f"{path}: not a PNG")
pos, idat, width = 8, b"", None
while pos < len(data):
    (length,) = struct.unpack(">I", data[pos:pos + 4])
    kind = data[pos + 4:pos + 8]
    body = data[pos + 8:pos + 8 + length]
    if kind == b"IHDR":
        width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
        if depth != 8 or color not in (2, 6) or interlace:
            sys.exit(f"{path}: unexpected PNG format (depth {depth}, color {color})")
        channels = 3 if color == 2 else 4
    elif kind == b"IDAT":
        idat += body
    pos += 12 + length
raw = zlib.decompress(idat)
stride = width * channels
prev = bytearray(stride)
colors, counts = set(), {}
for y in range(height):
    f = raw[y * (stride + 1)]
    line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
    for i in range(stride):
        a = line[i - channels] if i >= channels else 0
        b = prev[i]
        c = prev[i - channels] if i >= channels else 0
        if f == 1:
            line[i] = (line[i] + a) & 255
        elif f == 2:
            line[i] = (line[i] + b) & 255
        elif f == 3:
            line[i] = (line[i] + (a + b) // 2) & 255
        elif f == 4:
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    prev = line
    if y % 2 == 0:
        for x in range(0, width, 2):
            px = bytes(line[x * channels:x * channels + 3])
            counts[px] = counts.get(px, 0) + 1
total = sum(counts.values())
background = max(counts.values())
ink = 1 - background / total
print(f"{path}: {width}x{height}, {len(counts)} distinct colors, {ink:.1%} of pixels off the background")
if len(counts) < 16 or ink < 0.05:
    sys.exit("the screenshot looks blank")
PY
