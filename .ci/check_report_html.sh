#!/usr/bin/env bash
# Opens a run's report.html in headless Chromium: a screenshot that must not
# be blank, and the DOM (as the browser built it) with the expected title and
# sections. Usage: .ci/check_report_html.sh RUN_DIR SCREENSHOT.png
set -euo pipefail
run=$1
shot=$2
chromium=$(command -v chromium || command -v chromium-browser)
flags=(--headless --no-sandbox --disable-gpu --hide-scrollbars --allow-file-access-from-files)
url="file://$(cd "$run" && pwd)/report.html"
"$chromium" "${flags[@]}" --window-size=1200,2400 --screenshot="$shot" "$url" 2>/dev/null
dom=$("$chromium" "${flags[@]}" --dump-dom "$url" 2>/dev/null)
for want in "<title>tlab run" "Training history" "Confusion matrix" "Worst mistakes" "macro avg" 'src="data:image/png;base64,'; do
  grep -qF "$want" <<<"$dom" || { echo "report.html: '$want' missing from the DOM Chromium built" >&2; exit 1; }
done
python3 - "$shot" <<'PY'
import struct, sys, zlib
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
w, h = struct.unpack(">II", data[16:24])
assert (w, h) == (1200, 2400), (w, h)
# Decode the IDAT stream and count distinct bytes: a blank page is one colour.
idat, at = b"", 8
while at < len(data):
    (length,), kind = struct.unpack(">I", data[at:at + 4]), data[at + 4:at + 8]
    if kind == b"IDAT":
        idat += data[at + 8:at + 8 + length]
    at += 12 + length
raw = zlib.decompress(idat)
assert len(set(raw[: 4 * w * 400])) > 20, "the screenshot is blank"
print(f"report.html: rendered {w}x{h} by Chromium, not blank, DOM has every section")
PY
