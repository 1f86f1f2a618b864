#!/usr/bin/env bash
# The offline demo: scikit-learn's digits as PNGs -> compare classical methods -> train -> predict.
set -euo pipefail
CACHE="${CACHE:-$HOME/.cache/imgclass}"
DIGITS="$CACHE/digits"

echo "== writing scikit-learn's digits as PNG files to $DIGITS"
python -m imgclass.data.samples digits "$DIGITS"

echo; echo "== imgclass data check $DIGITS"
imgclass data check "$DIGITS"

echo; echo "== imgclass compare (50/50 stratified split, seed 0)"
imgclass compare "$DIGITS" --methods pixels+svm,hog+svm,hog+logreg,pixels+knn,lbp+rf --val-split 0.5 --seed 0

echo; echo "== imgclass train $DIGITS --method hog+svm (the leaderboard winner)"
rm -rf runs/demo-digits
imgclass train "$DIGITS" --method hog+svm --val-split 0.5 --seed 0 --out runs/demo-digits

echo; echo "== imgclass predict on held-out images (from runs/demo-digits/split.json)"
HELD_OUT=$(python - <<'PY'
import json
split = json.load(open("runs/demo-digits/split.json"))
print(" ".join(split["root"] + "/" + p for p in split["splits"]["val"][::150][:6]))
PY
)
imgclass predict runs/demo-digits/model $HELD_OUT --top-k 3

echo; echo "== imgclass predict imagenet:lite0 (pretrained ImageNet EfficientNet-Lite0, packaged offline)"
python -m imgclass.data.samples photos "$CACHE/photos" > /dev/null
imgclass predict imagenet:lite0 "$CACHE/photos" --top-k 3
