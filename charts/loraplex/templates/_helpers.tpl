{{- define "loraplex.name" -}}loraplex-operator{{- end -}}

{{- define "loraplex.labels" -}}
app.kubernetes.io/name: loraplex-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: loraplex
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "loraplex.selector" -}}
app.kubernetes.io/name: loraplex-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "loraplex.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "loraplex.trainerImage" -}}
{{ .Values.trainerImage.repository }}:{{ .Values.trainerImage.tag | default .Chart.AppVersion }}
{{- end -}}

{{- /* loraplex's resources as the chart's test pod checks them: plural.loraplex.dev/<version>,... */}}
{{- define "loraplex.testResources" -}}
{{- $out := list }}
{{- range .resources }}{{ $out = append $out (printf "%s.loraplex.dev/v1alpha1" .) }}{{ end }}
{{- join "," $out }}
{{- end -}}
