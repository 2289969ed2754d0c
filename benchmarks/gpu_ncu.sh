#!/usr/bin/env bash
# One device call: Nsight Compute's full set of metrics (and warp-stall samples per SASS instruction) for one forward
# call of each case:variant in PROFILES (tune.py's case names, hopper_ab.py's variants), the clocks left alone.
# The CSV pages go back in one archive (ncu_csv.tar.gz) and ncu_summary.py's reading of them in ncu_summary.txt.
OUT=${OUT:-benchmarks/results/local}
source benchmarks/device_setup.sh "$OUT/r"
PROFILES=${PROFILES:-"d128-mha-s512-causal:gluon d128-mha-s512-causal:sdpa_cudnn"}
work=$(mktemp -d)
for p in $PROFILES; do
  case=${p%%:*}; variant=${p##*:}; name=$case-$variant
  timeout ${NCU_TIMEOUT:-150} ncu --profile-from-start off --set full --clock-control none -f -o "$work/$name" \
    python3 benchmarks/ncu_profile.py --case "$case" --variant "$variant" > "$work/$name.log" 2>&1
  echo "$name: exit $?"; tail -n 3 "$work/$name.log"
  ncu -i "$work/$name.ncu-rep" --page details --csv > "$work/$name.details.csv" 2>&1
  ncu -i "$work/$name.ncu-rep" --page source --csv --print-source sass > "$work/$name.sass.csv" 2>&1
  ncu -i "$work/$name.ncu-rep" --page raw --csv > "$work/$name.raw.csv" 2>&1
done
python3 benchmarks/ncu_summary.py "$work" > "$OUT/r/ncu_summary.txt" 2>&1
tar czf "$OUT/r/ncu_csv.tar.gz" -C "$work" $(cd "$work" && ls *.csv *.log)
