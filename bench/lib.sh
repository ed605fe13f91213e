# Shared by the bench/ scripts: sourced, not run.

# The median of the numbers on stdin, one per line.
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# Writes dirty pages out and empties the page cache (needs root).
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
