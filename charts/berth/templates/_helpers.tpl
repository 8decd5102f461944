{{- define "berth.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "berth.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "berth.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The installer's settings (install.toml): what berth-install reads. */}}
{{- define "berth.settings" -}}
{{- $config := deepCopy .Values.config -}}
{{- if .Values.runtimeHandlers -}}
{{- $runtimes := get $config "runtimes" | default dict -}}
{{- $handlers := get $runtimes "handlers" | default dict -}}
{{- $_ := set $runtimes "handlers" (merge $handlers (deepCopy .Values.runtimeHandlers)) -}}
{{- $_ := set $config "runtimes" $runtimes -}}
{{- end -}}
{{- $s := dict "switch_kubelet" .Values.switchKubelet "uninstall_on_delete" .Values.uninstallOnDelete "install_cni" .Values.installCNI "ready_timeout" .Values.readyTimeout -}}
{{- if .Values.registryMirrors }}{{ $_ := set $s "mirrors" .Values.registryMirrors }}{{ end -}}
{{- if $config }}{{ $_ := set $s "config" $config }}{{ end -}}
{{- toToml $s -}}
{{- end -}}
