#!/usr/bin/env bash
# Re-make docs/img/udp-*.png: run the UDP hub and three clients in tmux panes,
# type the demo, capture each pane's text and render the window to PNG.
# Needs tmux and Pillow; Pillow goes into a throwaway venv (SHOTS_VENV,
# default /tmp/venv-shots), never into the project's requirements.
#   usage: docs/make_udp_screenshots.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
img=$root/docs/img
venv=${SHOTS_VENV:-/tmp/venv-shots}
command -v tmux >/dev/null || { echo "needs tmux (apt-get install -y tmux)" >&2; exit 1; }
if ! "$venv/bin/python" -c 'import PIL' 2>/dev/null; then
  python3 -m venv "$venv" && "$venv/bin/pip" install -q pillow
fi
mkdir -p "$img"
port=${PORT:-$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
expiry=10
tm() { tmux -L np-udp-demo "$@"; }
tm kill-server 2>/dev/null || true
trap 'tm kill-server 2>/dev/null || true' EXIT

# One window: the hub on top, alice | bob | carol below.
tm -f /dev/null new-session -d -s demo -x 200 -y 34 -c "$root" "env PS1='$ ' bash --norc"
tm set -g status off
tm set -g pane-border-status top
tm set -g pane-border-format ' #{pane_title} '
tm split-window -v -l 18 -t demo:0.0 -c "$root" "env PS1='$ ' bash --norc"
tm split-window -h -l 133 -t demo:0.1 -c "$root" "env PS1='$ ' bash --norc"
tm split-window -h -l 66 -t demo:0.2 -c "$root" "env PS1='$ ' bash --norc"
hub=demo:0.0 alice=demo:0.1 bob=demo:0.2 carol=demo:0.3
tm select-pane -t $hub -T "udp_hub.py (--expiry $expiry)"
tm select-pane -t $alice -T alice
tm select-pane -t $bob -T bob
tm select-pane -t $carol -T carol

say() { tm send-keys -t "$1" -l "$2"; tm send-keys -t "$1" Enter; sleep "${3:-0.6}"; }

shot() {  # shot NAME CAPTION: capture every pane and render the window
  local dir; dir=$(mktemp -d)
  for p in 0 1 2 3; do
    tm display-message -p -t demo:0.$p '#{pane_left} #{pane_top} #{pane_width} #{pane_height} #{pane_title}' > "$dir/$p.geom"
    tm capture-pane -p -t demo:0.$p > "$dir/$p.txt"
  done
  "$venv/bin/python" - "$dir" "$img/$1.png" "$2" <<'PY'
import pathlib, re, sys
from PIL import Image, ImageDraw, ImageFont
src, out, caption = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
font = ImageFont.truetype("/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf", 15)
bold = ImageFont.truetype("/usr/share/fonts/truetype/dejavu/DejaVuSansMono-Bold.ttf", 15)
cw, ch = round(font.getlength("M")), 20
panes = []
for geom in sorted(src.glob("*.geom")):
    left, top, width, height, *title = geom.read_text().split()
    lines = geom.with_suffix(".txt").read_text().splitlines()
    panes.append((int(left), int(top), int(width), int(height), " ".join(title), lines))
cols = max(p[0] + p[2] for p in panes)
rows = max(p[1] + p[3] for p in panes)
pad, head = 12, 34
im = Image.new("RGB", (cols * cw + 2 * pad, rows * ch + 2 * pad + head), "#1b1d23")
d = ImageDraw.Draw(im)
d.text((pad, 8), caption, font=bold, fill="#e6e6e6")
colour = [(r"^server->\S+#(<[^<>]*><\d{10}>)?Error|^Error:", "#ff8a80"),  # errors
          (r"^server->", "#80cbc4"),                       # answers from the hub
          (r"^[^\s#<>]+->[^\s#<>]+#<", "#ffd54f"),         # forwards from other clients
          (r" INFO | WARNING ", "#9e9e9e")]
for left, top, width, height, title, lines in panes:
    x0, y0 = pad + left * cw, pad + head + top * ch
    # tmux draws the title on the border row just above the pane
    d.rectangle([x0 - 4, y0 - ch, x0 + width * cw + 2, y0 + height * ch + 2], outline="#5c6370")
    d.rectangle([x0 + cw, y0 - ch - 2, x0 + (len(title) + 3) * cw, y0 - 2], fill="#1b1d23")
    d.text((x0 + 2 * cw, y0 - ch), title, font=bold, fill="#82aaff")
    for i, line in enumerate(lines[:height]):
        fill = "#e6e6e6"  # typed lines and the shell
        if not line.startswith("$ "):
            for pattern, c in colour:
                if re.search(pattern, line):
                    fill = c
                    break
        d.text((x0, y0 + i * ch), line[:width], font=font, fill=fill)
im.save(out)
print("wrote", out)
PY
  rm -rf "$dir"
}

# 1. The hub starts; three clients log in (carol mistypes her password first).
say $hub "./udp_hub.py 127.0.0.1 $port --expiry $expiry" 1.0
for p in $alice $bob $carol; do say $p "./client --udp 127.0.0.1 $port" 0.3; done
sleep 1.5
say $carol "carol->server#login<carol12>"
say $carol "carol->server#login<carol123>"
say $alice "alice->server#login<alice123>"
say $bob "bob->server#login<bob123>"
shot udp-1-login "1. Hub started; alice, bob and carol log in (carol mistypes her password first)"

# 2. Messages: forwarded with the receiver's token, echoed to the sender.
say $alice "alice->bob#Hi Bob, lunch at noon?"
say $bob "bob->alice#Sure, see you there"
say $carol "carol->bob#Can I come too?"
say $bob "bob->carol#Of course!"
say $alice "alice->dave#Are you there?"
say $bob "alice->carol#pretending to be alice"
shot udp-2-messages "2. Messages through the hub: each goes out with the receiver's token; errors for offline ids"

# 3. bob logs off; carol stays silent past --expiry and must log in again.
say $bob "bob->server#logoff"
say $alice "alice->bob#Still there?"
sleep $((expiry + 1))
say $carol "carol->alice#Hello?"
say $carol "carol->server#login<carol123>"
shot udp-3-logoff-expiry "3. bob logs off; carol is silent for more than --expiry $expiry s, so the hub asks her to log in again"

tm send-keys -t $hub C-c
sleep 0.5
