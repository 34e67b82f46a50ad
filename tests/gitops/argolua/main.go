// Command argolua runs an Argo CD health.lua the way Argo CD (util/lua, VM.runLua) runs one from
// argocd-cm: in gopher-lua, with only the package, base and table libraries open (no string, math
// or io: `useOpenLibs` is off by default; Argo CD's time-only os is left out too), the object as
// the global `obj`, and the returned table read as {status, message}.
//
// Usage: argolua SCRIPT < objects.json, where objects.json is a JSON array of Kubernetes objects.
// Output: a JSON array, one {"status": ..., "message": ...} per object, in the same order.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	lua "github.com/yuin/gopher-lua"
)

type health struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: argolua SCRIPT < objects.json")
		os.Exit(2)
	}
	script, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintf(os.Stderr, "argolua: %v\n", err)
		os.Exit(2)
	}
	var objects []map[string]interface{}
	if err := json.NewDecoder(os.Stdin).Decode(&objects); err != nil {
		fmt.Fprintf(os.Stderr, "argolua: reading a JSON array of objects from stdin: %v\n", err)
		os.Exit(2)
	}
	results := make([]health, 0, len(objects))
	for _, object := range objects {
		result, err := run(string(script), object)
		if err != nil {
			fmt.Fprintf(os.Stderr, "argolua: %v\n", err)
			os.Exit(1)
		}
		results = append(results, result)
	}
	if err := json.NewEncoder(os.Stdout).Encode(results); err != nil {
		fmt.Fprintf(os.Stderr, "argolua: %v\n", err)
		os.Exit(1)
	}
}

func run(script string, object map[string]interface{}) (health, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), NRet: 0, Protect: true}, lua.LString(lib.name)); err != nil {
			return health{}, err
		}
	}
	l.SetGlobal("obj", decode(l, object))
	if err := l.DoString(script); err != nil {
		return health{}, err
	}
	returned, ok := l.Get(-1).(*lua.LTable)
	if !ok {
		return health{}, fmt.Errorf("the script returned %s, not a table", l.Get(-1).Type())
	}
	return health{
		Status:  lua.LVAsString(returned.RawGetString("status")),
		Message: lua.LVAsString(returned.RawGetString("message")),
	}, nil
}

// decode turns a JSON value into Lua values as Argo CD's util/lua decodeValue does: objects and
// arrays become tables (arrays 1-based), numbers numbers.
func decode(l *lua.LState, value interface{}) lua.LValue {
	switch v := value.(type) {
	case bool:
		return lua.LBool(v)
	case float64:
		return lua.LNumber(v)
	case string:
		return lua.LString(v)
	case []interface{}:
		table := l.CreateTable(len(v), 0)
		for _, item := range v {
			table.Append(decode(l, item))
		}
		return table
	case map[string]interface{}:
		table := l.CreateTable(0, len(v))
		for key, item := range v {
			table.RawSetH(lua.LString(key), decode(l, item))
		}
		return table
	}
	return lua.LNil
}
