#!/bin/sh
# Regenerates the fixtures from the *.rules inputs with the real iptables
# (1.8.9, nf_tables), each in a throwaway network namespace: never run
# iptables in the machine's own namespace. Run as root from this directory:
#   unshare --net true && sh make.sh
set -eu
cd "$(dirname "$0")"
for f in *.rules; do
	name=${f%.rules}
	unshare --net sh -eu -c '
		name=$1
		iptables-restore -c < "$name.rules"
		iptables-save > "$name.save"
		iptables-save -c > "$name.save-c"
		for t in raw mangle nat filter; do
			grep -q "^\*$t\$" "$name.save" || continue
			for flags in L vL nL vnL vnxL xvL vL--line-numbers; do
				case $flags in
				vL--line-numbers) args="-v -L --line-numbers" ;;
				*) args="-$flags" ;;
				esac
				iptables -t "$t" $args > "list/$name.$t.$flags.txt"
			done
		done
		iptables -t filter -vnL INPUT > "list/$name.filter.vnL-INPUT.txt"
	' sh "$name"
done
