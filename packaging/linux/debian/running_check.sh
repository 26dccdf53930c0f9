# Shared by preinst and prerm (inserted by build_linux.sh): refuse to replace or remove the
# bundle while an OpenATP process runs from it. A running bundle loads Python modules and
# Qt plugins lazily; swapping the files under it would crash it mid-plan.
openatp_running_pids() {
    for exe in /proc/[0-9]*/exe; do
        target=$(readlink "$exe" 2>/dev/null) || continue
        case "$target" in
            /opt/openatp/openatp|/opt/openatp/openatp\ \(deleted\)) pid=${exe#/proc/}; echo "${pid%/exe}" ;;
        esac
    done
}
if [ "${OPENATP_FORCE_INSTALL:-0}" != "1" ]; then
    pids=$(openatp_running_pids | tr '\n' ' ' | sed 's/ *$//')
    if [ -n "$pids" ]; then
        echo "openatp: OpenATP is running (process $pids). Close it (save your work first) and run the" >&2
        echo "openatp: installer again; nothing was changed. To go ahead anyway: OPENATP_FORCE_INSTALL=1." >&2
        exit 1
    fi
fi
