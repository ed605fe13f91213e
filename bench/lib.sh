# Shared by the bench/ scripts: sourced, not run.

# The median of the numbers on stdin, one per line.
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# Writes dirty pages out and empties the page cache (needs root).
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }

# "READS READ WRITES WRITTEN": the requests and sectors (512 bytes) read and
# written so far by the block device that holds directory $1; zeros when it
# has none (tmpfs).
disk_sectors() {
  local dev
  dev=$(basename "$(df --output=source "$1" | tail -1)")
  if [ -r "/sys/class/block/$dev/stat" ]; then
    awk '{print $1, $3, $5, $7}' "/sys/class/block/$dev/stat"
  else
    echo 0 0 0 0
  fi
}
# "R/W MiB in R/W requests": what that device moved between two disk_sectors
# readings, and in how many requests (a 4 MiB chunk in one request is
# 4 MiB a request; split into smaller ones, it waits its turn several times).
disk_mib() {  # disk_mib "BEFORE" "AFTER"
  echo "$1 $2" | awk '{printf "%.0f/%.0f MiB in %d/%d requests", ($6 - $2) / 2048, ($8 - $4) / 2048, $5 - $1, $7 - $3}'
}
