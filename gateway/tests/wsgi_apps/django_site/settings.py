"""The one settings file of the Django project for tests/wsgi.rs: no
database, no installed apps, templates from templates/ beside it."""

from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent

SECRET_KEY = "tests only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "django_site.urls"
WSGI_APPLICATION = "django_site.wsgi.application"
INSTALLED_APPS = []
# No CSRF middleware: the tests post forms without a token.
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
DATABASES = {}
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "DIRS": [BASE_DIR / "templates"],
}]
USE_TZ = True
