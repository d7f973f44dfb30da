# Sourced by the .ci/install-*.sh scripts: apt_install PACKAGE... installs Debian packages
# without questions or recommended extras, through sudo where not root.
apt_install() {
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        sudo="sudo"
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "$@"
}
