# sitepeek completion for bash 4.4+: add `eval "$(sitepeek completion bash)"` to ~/.bashrc.
# sitepeek answers with one completion a line, TYPE<tab>VALUE<tab>HELP; every value is
# quoted here, so no completion is ever run, globbed or split.
_sitepeek_completion() {
    local line type value
    local -a lines
    mapfile -t lines < <(env COMP_WORDS="${COMP_WORDS[*]}" COMP_CWORD="$COMP_CWORD" \
        _SITEPEEK_COMPLETE=bash_complete "$1" 2>/dev/null)
    COMPREPLY=()
    for line in "${lines[@]}"; do
        IFS=$'\t' read -r type value _ <<< "$line"
        case $type in
            dir) compopt -o dirnames; COMPREPLY=(); return 0 ;;
            file) compopt -o default; COMPREPLY=(); return 0 ;;
            plain) COMPREPLY+=("$value") ;;
        esac
    done
    return 0
}

complete -o nosort -F _sitepeek_completion sitepeek
