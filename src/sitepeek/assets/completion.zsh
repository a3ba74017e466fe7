#compdef sitepeek
# sitepeek completion for zsh: add `eval "$(sitepeek completion zsh)"` to ~/.zshrc (after
# compinit), or save as _sitepeek in a directory of $fpath.
# sitepeek answers with one completion a line, TYPE<tab>VALUE<tab>HELP; every value is
# quoted here, so no completion is ever run, globbed or split.
_sitepeek_completion() {
    local line
    local -a lines fields described plain
    (( ! $+commands[sitepeek] )) && return 1
    lines=("${(@f)$(env COMP_WORDS="${words[*]}" COMP_CWORD=$((CURRENT-1)) \
        _SITEPEEK_COMPLETE=zsh_complete sitepeek 2>/dev/null)}")
    for line in "${lines[@]}"; do
        fields=("${(@ps:\t:)line}")
        case $fields[1] in
            dir) _path_files -/; return ;;
            file) _path_files -f; return ;;
            plain)
                if [[ -n $fields[3] ]]; then
                    described+=("${fields[2]//:/\\:}:$fields[3]")
                else
                    plain+=("$fields[2]")
                fi
                ;;
        esac
    done
    (( $#described )) && _describe -V unsorted described -U
    (( $#plain )) && compadd -U -V unsorted -a plain
    return 0
}

if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
    _sitepeek_completion "$@"
else
    compdef _sitepeek_completion sitepeek
fi
