# Shared by the bench/ scripts: sourced, not run.

# The median of the numbers on stdin, one per line.
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# Writes dirty pages out and empties the page cache (needs root).
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }

# "READ WRITTEN": the sectors (512 bytes) read and written so far by the
# block device that holds directory $1; "0 0" when it has none (tmpfs).
disk_sectors() {
  local dev
  dev=$(basename "$(df --output=source "$1" | tail -1)")
  if [ -r "/sys/class/block/$dev/stat" ]; then
    awk '{print $3, $7}' "/sys/class/block/$dev/stat"
  else
    echo 0 0
  fi
}
# "R/W" MiB moved on that device between two disk_sectors readings.
disk_mib() {  # disk_mib "BEFORE" "AFTER"
  echo "$1 $2" | awk '{printf "%.0f/%.0f", ($3 - $1) / 2048, ($4 - $2) / 2048}'
}
