# Shared by the file resource's hooks. The "resource" is a directory per member under
# $FILE_RESOURCE_DIR (shared by the members, as a replicated disk would be in a demo):
#   <member>/role      primary | replica
#   <member>/epoch     the epoch it was promoted under (its timeline)
#   <member>/position  how many writes it has (replicas copy the leader's)
#   <member>/leader    whom it follows
#   <member>/stopped   present while the resource is stopped
#   fence              the highest epoch any member was promoted under: older writers are refused
: "${FILE_RESOURCE_DIR:?set FILE_RESOURCE_DIR in [hooks.env]}"
: "${LEASEHOLD_NAME:?run by leasehold-ha, which sets LEASEHOLD_NAME}"
ROOT=$FILE_RESOURCE_DIR
D=$ROOT/$LEASEHOLD_NAME
mkdir -p "$D"

# One open, no test first: another hook of this member may remove the file in between
# (follow removes "leader" while status reads it; a failed status makes peers think the member
# is down).
read_or() { v=$(cat "$1" 2>/dev/null) || v=""; if [ -n "$v" ]; then echo "$v"; else echo "$2"; fi; }
# Atomic replace, so a concurrent reader never sees a half-written file.
put() { printf '%s\n' "$2" > "$1.tmp.$$" && mv -f "$1.tmp.$$" "$1"; }
