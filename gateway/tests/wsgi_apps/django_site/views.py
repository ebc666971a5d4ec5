"""Ordinary Django views; nothing here knows about the pool."""

import os
import tempfile

from django.http import FileResponse, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import render
from django.views import View

DATA = os.path.join(tempfile.mkdtemp(prefix="django-site"), "data.bin")
with open(DATA, "wb") as f:
    f.write(bytes(range(256)) * 4096)


def hello(request, name):
    return HttpResponse("hello, %s (%s)\n" % (name, request.GET.get("from", "nowhere")),
                        content_type="text/plain")


class ItemView(View):
    def get(self, request, item_id):
        return JsonResponse({"item_id": item_id, "method": "GET",
                             "script_name": request.META["SCRIPT_NAME"]})

    def delete(self, request, item_id):
        return JsonResponse({"item_id": item_id, "method": "DELETE"}, status=202)


def greeting(request):
    return render(request, "greeting.html", {"name": request.GET.get("name", "world"),
                                             "items": ["one", "two"]})


def form(request):
    if request.method != "POST":
        return HttpResponse(status=405)
    return JsonResponse({"name": request.POST["name"], "tags": request.POST.getlist("tag"),
                         "content_type": request.content_type})


def stream(request):
    return StreamingHttpResponse(("line %d\n" % n for n in range(5)), content_type="text/plain")


def file(request):
    return FileResponse(open(DATA, "rb"), as_attachment=True, filename="data.bin")
