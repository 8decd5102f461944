#!/bin/sh
# curl look-alike for the agnhost image, on busybox wget (and busybox nc for --interface): the
# options Kubernetes' e2e specs pass to curl inside agnhost pods, with curl's exit codes for what
# they test (0 on any HTTP answer unless -f, 7 when the connection fails, 28 on a timeout).
#   -s -S -q -g -k -v -L   accepted (busybox wget is quiet here, never checks certificates, follows)
#   -o FILE                write the body to FILE           -w FMT   print FMT; %{http_code} expands
#   -i                     headers before the body          -I       headers only (HEAD)
#   -f                     exit 22 on HTTP >= 400           -X M     method (GET, HEAD or POST)
#   -H/--header H          extra request header             -d DATA  POST DATA
#   --connect-timeout N, -m/--max-time N                    --interface IP (HTTP only, via nc)
# It must never reach for anything but busybox.
set -u
out=- fmt='' include=0 head=0 fail=0 method='' data='' iface='' ctimeout='' maxtime='' url=''
headers=
while [ $# -gt 0 ]; do
    case $1 in
    -s | --silent | -S | --show-error | -q | -g | --globoff | -k | --insecure | -v | -L | --location) ;;
    -sS | -Ss | -qs | -sq | -gs | -sg | -sk | -ks | -sL | -Ls) ;;
    -o | --output) out=$2; shift ;;
    -w | --write-out) fmt=$2; shift ;;
    -i | --include) include=1 ;;
    -I | --head) head=1 ;;
    -f | --fail) fail=1 ;;
    -X | --request) method=$2; shift ;;
    -X*) method=${1#-X} ;;
    -H | --header) headers="$headers
$2"; shift ;;
    -d | --data | --data-raw | --data-binary) data=$2; method=${method:-POST}; shift ;;
    --connect-timeout) ctimeout=$2; shift ;;
    -m | --max-time) maxtime=$2; shift ;;
    --interface) iface=$2; shift ;;
    -*) echo "curl (busybox look-alike): option $1 is not supported" >&2; exit 2 ;;
    *) url=$1 ;;
    esac
    shift
done
[ -n "$url" ] || { echo "curl: no URL specified" >&2; exit 2; }
case $url in *://*) ;; *) url=http://$url ;; esac
[ "$head" = 1 ] && method=HEAD
[ "$method" = GET ] && method=

tmp=$(mktemp -d) || exit 2
trap 'rm -rf "$tmp"' EXIT
limit=${maxtime:-${ctimeout:-}}
# Whole seconds: busybox timeout and wget -T take integers.
limit=${limit%%.*}
[ "$limit" = 0 ] && limit=1

fetch_wget() {
    set -- -S -O "$tmp/body"
    [ -n "$limit" ] && set -- "$@" -T "$limit"
    [ "$method" = HEAD ] && set -- "$@" --spider
    [ "$method" = POST ] && set -- "$@" --post-data "$data"
    printf '%s\n' "$headers" | while IFS= read -r h; do [ -n "$h" ] && printf '%s\n' "$h"; done >"$tmp/h"
    while IFS= read -r h; do set -- "$@" --header "$h"; done <"$tmp/h"
    if [ -n "$maxtime" ]; then
        timeout "$limit" wget "$@" "$url" 2>"$tmp/err"
    else
        wget "$@" "$url" 2>"$tmp/err"
    fi
    rc=$?
    # -S prints the response headers indented by two spaces; the status line comes first.
    sed -n 's/^  //p' "$tmp/err" | tr -d '\r' | sed '/^$/d' >"$tmp/headers"
}

fetch_nc() {
    rest=${url#http://}
    hostport=${rest%%/*}
    path=/${rest#"$hostport"}
    path=/${path#//}
    [ "$rest" = "$hostport" ] && path=/
    host=${hostport%:*} port=${hostport##*:}
    [ "$host" = "$hostport" ] && port=80
    host=${host#[}; host=${host%]}
    {
        printf '%s %s HTTP/1.0\r\nHost: %s\r\nUser-Agent: curl\r\nConnection: close\r\n' "${method:-GET}" "$path" "$hostport"
        printf '%s\n' "$headers" | while IFS= read -r h; do [ -n "$h" ] && printf '%s\r\n' "$h"; done
        if [ -n "$data" ]; then printf 'Content-Length: %s\r\n\r\n%s' "${#data}" "$data"; else printf '\r\n'; fi
    } >"$tmp/req"
    set -- -s "$iface" -w "${limit:-10}" "$host" "$port"
    nc "$@" <"$tmp/req" >"$tmp/resp" 2>"$tmp/err"
    rc=$?
    tr -d '\r' <"$tmp/resp" | sed '/^$/q' | sed '/^$/d' >"$tmp/headers"
    tr -d '\r' <"$tmp/resp" | sed '1,/^$/d' >"$tmp/body"
    [ -s "$tmp/headers" ] && rc=0
}

if [ -n "$iface" ]; then fetch_nc; else fetch_wget; fi

code=$(sed -n '1s/^HTTP\/[0-9.]* \([0-9][0-9][0-9]\).*/\1/p' "$tmp/headers")
if [ -z "$code" ]; then
    # No HTTP answer: a timeout (busybox: "timed out", or killed by timeout) or a failed connection.
    if [ "$rc" -ge 124 ] || grep -qi 'timed out' "$tmp/err"; then exit 28; fi
    grep -v '^  ' "$tmp/err" | grep -v '^Connecting to' >&2
    [ -n "$fmt" ] && printf '%s' "$fmt" | sed 's/%{http_code}/000/g; s/\\n/\n/g'
    exit 7
fi
{
    if [ "$include" = 1 ] || [ "$method" = HEAD ]; then
        sed 's/$/\r/' "$tmp/headers"
        printf '\r\n'
    fi
    [ -f "$tmp/body" ] && cat "$tmp/body"
} >"$tmp/out"
if [ "$out" = - ]; then cat "$tmp/out"; else cat "$tmp/out" >"$out"; fi
[ -n "$fmt" ] && printf '%s' "$fmt" | sed "s/%{http_code}/$code/g; s/\\\\n/\n/g"
if [ "$fail" = 1 ] && [ "$code" -ge 400 ]; then exit 22; fi
exit 0
